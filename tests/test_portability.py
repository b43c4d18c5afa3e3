"""A run moves to another machine: the π_ref rebuilt there differs (float rounding), so the
resume names --ref; pointed at a copy of the π_ref it started from, it continues."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

import sealign
from conftest import QUICK_SFT, TINY, small_run
from test_cli import assert_fits_80_columns, run_cli
from sealign.errors import SealignError
from sealign.sft import ensure_reference


def test_a_resume_elsewhere_needs_a_copy_of_pi_ref(tmp_path, task_cfg, monkeypatch, capsys):
    run = small_run(sealign.TrainConfig(budget=32, batch_size=16, eval_every=16, out=str(tmp_path / "r")), task_cfg)
    summary = sealign.train(run)
    built_here = ensure_reference(task_cfg, TINY, QUICK_SFT, progress=False).path
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["reference_source"] == str(built_here)
    copy = shutil.copytree(built_here, tmp_path / "copy of pi_ref")

    # the other machine: its own cache, where the same recipe gave slightly other weights
    monkeypatch.setenv("SEALIGN_HOME", str(tmp_path / "there"))
    rebuilt = ensure_reference(task_cfg, TINY, QUICK_SFT, progress=False).path
    model = AutoModelForCausalLM.from_pretrained(rebuilt)
    with torch.no_grad():
        next(model.parameters()).add_(1e-6)
    model.save_pretrained(rebuilt)
    with pytest.raises(SealignError, match="point --ref at a copy") as e:
        sealign.resume(tmp_path / "r")
    assert str(built_here) in str(e.value) and "\n" not in str(e.value)

    # --ref with --resume says where the copy lies: not a changed setting
    figures = tmp_path / "again.json"
    code, out, err = run_cli(capsys, "train", "--resume", str(tmp_path / "r"), "--ref", str(copy), "--quiet", "--json", str(figures))
    assert code == 0, err
    assert_fits_80_columns(out)
    again = json.loads(figures.read_text())
    assert again["labels_asked_this_session"] == 0 and again["final_win_rate"] == summary["final_win_rate"]
    code, _, err = run_cli(capsys, "train", "--resume", str(tmp_path / "r"), "--ref", str(tmp_path / "nowhere"), "--quiet")
    assert code == 2 and "no such file or folder" in err


def test_a_resume_pointed_at_no_folder_is_refused_before_any_model_loads(task_cfg):
    from sealign.config import ModelConfig
    from sealign.models import load_models

    with pytest.raises(SealignError, match="--ref '/no/such/copy': no such folder"):
        load_models(ModelConfig(), task_cfg, TINY, QUICK_SFT, reference_copy="/no/such/copy", progress=False)
