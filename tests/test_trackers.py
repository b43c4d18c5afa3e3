"""--report-to: TensorBoard per-step curves, wandb offline, trackio; completions of every evaluation."""

from __future__ import annotations

import json

import pytest

from conftest import SMALL_FLAGS
from sealign.cli import main

RUN = ["train", *SMALL_FLAGS, "--budget", "32", "--batch-size", "16", "--eval-every", "16", "--eval-samples", "3", "--quiet"]


def test_completions_of_every_evaluation_and_per_step_tensorboard_curves(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main([*RUN, "--out", str(tmp_path / "r")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "r" / "completions.jsonl").read_text().splitlines()]
    assert [r["queries"] for r in rows] == [0] * 3 + [16] * 3 + [32] * 3
    assert set(rows[0]) == {"queries", "step", "prompt", "response", "reference", "win_prob"}
    events = EventAccumulator(str(tmp_path / "r" / "tb")).Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [16, 32]  # every learner step, by queries
    assert [e.step for e in events.Scalars("win_rate")] == [0, 16, 32]


def test_wandb_offline_writes_a_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is not installed: pip install 'sealign[wandb]'")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert main([*RUN, "--report-to", "wandb", "--out", str(tmp_path / "r")]) == 0
    (run,) = (tmp_path / "r" / "wandb").glob("offline-run-*")
    assert list(run.glob("*.wandb")) and not (tmp_path / "r" / "tb").exists()


def test_trackio_logs_locally(tmp_path):
    import os
    import subprocess
    import sys

    pytest.importorskip("trackio", reason="trackio is not installed: pip install 'sealign[trackio]'")
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio")}  # read by trackio when it is imported: a fresh process
    argv = [sys.executable, "-m", "sealign", *RUN, "--report-to", "trackio,tensorboard", "--out", str(tmp_path / "r")]
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert list((tmp_path / "trackio").rglob("*.db")) and (tmp_path / "r" / "tb").is_dir()


@pytest.mark.parametrize(
    "flags, fragment",
    [(["--report-to", "mlflow"], "unknown --report-to 'mlflow'"), (["--report-to", "none,wandb"], "cannot be combined"), (["--log-every", "0"], "--log-every")],
)
def test_bad_report_to_is_one_line(capsys, tmp_path, flags, fragment):
    assert main([*RUN, *flags, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0]
