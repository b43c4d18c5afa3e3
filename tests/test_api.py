"""The Python API: a run from dataclasses or flags, resume, results as data; the example runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import sealign
from conftest import SMALL_FLAGS, small_run

EXAMPLE = Path(__file__).parent.parent / "examples" / "python_api.py"


def test_train_resume_and_read_run_from_python(tmp_path, task_cfg):
    run = small_run(sealign.TrainConfig(budget=48, batch_size=16, eval_every=32, out=str(tmp_path / "r")), task_cfg)
    summary = sealign.train(run)
    results = sealign.read_run(tmp_path / "r")
    assert results.finished and results.summary == summary
    assert [m["queries"] for m in results.metrics] == [0, 32, 48]
    assert [q["index"] for q in results.queries] == list(range(48))
    assert sealign.RunConfig.from_dict(results.config, str(tmp_path / "r")).to_dict() == run.to_dict()
    again = sealign.resume(tmp_path / "r")  # finished: nothing asked, the same figures
    assert again["labels_asked_this_session"] == 0 and again["final_win_rate"] == summary["final_win_rate"]


def test_run_config_from_flags_equals_the_dataclasses(tmp_path):
    flags = sealign.run_config(["--agent", "sea", "--budget", "64", "--n-train", "300", "--erm-heads", "4", "--out", "x"])
    built = sealign.RunConfig(
        sealign.TrainConfig(agent="sea", budget=64, out="x"), sealign.TaskConfig(n_train=300), erm=sealign.ERMConfig(erm_heads=4)
    )
    assert flags == built


def test_the_example_script_runs_and_resumes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # read here: the fixtures have set SEALIGN_HOME
    argv = [sys.executable, str(EXAMPLE), str(tmp_path / "ex"), *SMALL_FLAGS, "--budget", "32", "--batch-size", "16", "--eval-every", "16"]
    first = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr
    assert "32 queries, 32 asked now" in first.stdout and "queries    16" in first.stdout
    second = subprocess.run(argv[:3], capture_output=True, text=True, env=env)
    assert second.returncode == 0 and "32 queries, 0 asked now" in second.stdout, second.stderr
