"""Shared fixtures: a small task, a private pi_ref cache, and quick SFT settings."""

from __future__ import annotations

import pytest
import torch

from sealign.config import OracleConfig, PolicyConfig, PreferenceModelConfig, RunConfig, SFTConfig, TaskConfig
from sealign.oracles import RewardOracle
from sealign.tasks import make_task

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's ~/.cache: every test session builds into its own folder."""
    monkeypatch.setenv("SEALIGN_HOME", str(tmp_path_factory.getbasetemp() / "sealign_home"))


@pytest.fixture(scope="session")
def task_cfg() -> TaskConfig:
    return TaskConfig(n_train=300, n_holdout=40)


@pytest.fixture(scope="session")
def task(task_cfg):
    return make_task(task_cfg)


@pytest.fixture
def oracle(task):
    return RewardOracle(task.reward, OracleConfig())


QUICK_SFT = SFTConfig(sft_steps=30, sft_batch_size=16, sft_lr=1e-3, sft_warmup=5)
QUICK_PM = PreferenceModelConfig(pm_steps=20, pm_batch_size=16)
QUICK_PM_FLAGS = ["--pm-steps", "20", "--pm-batch-size", "16"]
SMALL_FLAGS = ["--n-train", "300", "--n-holdout", "40", "--sft-steps", "30", "--sft-batch-size", "16", "--sft-warmup", "5", *QUICK_PM_FLAGS]  # the same, as train flags
TINY = PolicyConfig(size="tiny")


def small_run(cfg, task_cfg, **parts) -> RunConfig:
    """A run of the tests' small task, tiny pi_ref and quick builds; `parts` replace RunConfig fields."""
    return RunConfig(cfg, **{"task": task_cfg, "policy": TINY, "sft": QUICK_SFT, "pm": QUICK_PM, **parts})


# -- tiny random Hugging Face models, saved to disk and loaded by path like any checkpoint -------


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, task) -> dict[str, str]:
    """Folders of a tiny GPT-2 and Llama policy and a GPT-2 reward model (sealign.tiny)."""
    from sealign.tiny import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny_models"), task.build_tokenizer())


@pytest.fixture(scope="session")
def prompts_jsonl(tmp_path_factory, task) -> str:
    """40 keywords records as a user's JSONL file."""
    from sealign.data import write_records

    path = tmp_path_factory.mktemp("data") / "prompts.jsonl"
    write_records(path, task.records("holdout")[:40])
    return str(path)
