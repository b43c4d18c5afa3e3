"""SFT of pi_ref: the loss falls, the run reproduces, and the cache is reused."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from conftest import QUICK_SFT, TINY
from sealign.policy import generate, load_policy
from sealign.sft import ensure_reference, train_sft


def test_sft_lowers_loss_and_reproduces(task_cfg):
    model_a, _, losses_a = train_sft(task_cfg, TINY, QUICK_SFT, progress=False)
    model_b, _, losses_b = train_sft(task_cfg, TINY, QUICK_SFT, progress=False)
    assert np.mean(losses_a[-5:]) < np.mean(losses_a[:5]) - 0.5
    assert losses_a == losses_b
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(pa, pb)


def test_reference_is_cached_and_loadable(task_cfg, task):
    sft_cfg = dataclasses.replace(QUICK_SFT, sft_seed=7)  # a config no other test builds
    first = ensure_reference(task_cfg, TINY, sft_cfg, progress=False)
    assert not first.reused and first.meta["loss_last"] < first.meta["loss_first"]
    start = time.time()
    second = ensure_reference(task_cfg, TINY, sft_cfg, progress=False)
    assert second.reused and second.path == first.path and time.time() - start < 1.0
    model, tokenizer = load_policy(first.path)
    prompts = [r.prompt for r in task.records("holdout")[:4]]
    batched = generate(model, tokenizer, prompts, greedy=True, max_new_tokens=6)
    alone = [generate(model, tokenizer, [p], greedy=True, max_new_tokens=6)[0] for p in prompts]
    assert batched == alone  # left padding does not change what a prompt generates
