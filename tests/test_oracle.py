"""Preference oracle: Bradley-Terry over the hidden reward (Eq. 3), labels, counting."""

from __future__ import annotations

import math

import pytest
import torch

from sealign.config import OracleConfig
from sealign.oracles import RewardOracle, bradley_terry, feedback_uniforms, labels_from_probs


def test_bradley_terry_hand_worked():
    """sigma((1 - 0) / 0.5) = sigma(2) = 1 / (1 + e^-2) = 0.880797..."""
    p = bradley_terry(torch.tensor([1.0]), torch.tensor([0.0]), temperature=0.5)
    assert p.item() == pytest.approx(1 / (1 + math.exp(-2)))


def test_antisymmetry(task, oracle):
    records = task.records("holdout")
    prompts = [r.prompt for r in records]
    a = [r.reference for r in records]
    b = [task.optimal_summary(r.prompt) for r in records]
    total = oracle.compare(prompts, a, b) + oracle.compare(prompts, b, a)
    assert torch.allclose(total, torch.ones_like(total))
    assert oracle.calls == 2 * len(records)


def test_identical_responses_are_a_tie(task, oracle):
    r = task.records("holdout")[0]
    assert oracle.compare([r.prompt], [r.reference], [r.reference]).item() == 0.5


def test_labels_hand_worked():
    """uniforms (coin, flip): argmax ignores the coin unless P = 1/2; bernoulli is coin < P; flip < flip_prob flips."""
    probs = torch.tensor([0.9, 0.1, 0.5, 0.5])
    u = torch.tensor([[0.99, 0.9], [0.0, 0.9], [0.3, 0.9], [0.7, 0.9]])
    assert labels_from_probs(probs, "argmax", 0.0, u).tolist() == [True, False, True, False]
    assert labels_from_probs(probs, "bernoulli", 0.0, u).tolist() == [False, True, True, False]
    u[:, 1] = torch.tensor([0.05, 0.5, 0.05, 0.5])
    assert labels_from_probs(probs, "argmax", 0.1, u).tolist() == [False, False, False, False]


def test_label_noise_statistics():
    u = feedback_uniforms(0, 0, 20000)
    ties = labels_from_probs(torch.full((20000,), 0.5), "argmax", 0.0, u)
    assert ties.double().mean().item() == pytest.approx(0.5, abs=0.02)  # neither position favoured
    assert labels_from_probs(torch.full((20000,), 0.8), "bernoulli", 0.0, u).double().mean().item() == pytest.approx(0.8, abs=0.01)
    assert labels_from_probs(torch.ones(20000), "argmax", 0.2, u).double().mean().item() == pytest.approx(0.8, abs=0.01)


def test_feedback_noise_is_keyed_by_label_index():
    """Drawing labels 0..9 at once or as 0..3 then 4..9 gives the same noise: resume-safe."""
    assert torch.equal(feedback_uniforms(7, 0, 10), torch.cat([feedback_uniforms(7, 0, 4), feedback_uniforms(7, 4, 6)]))
    assert not torch.equal(feedback_uniforms(7, 0, 10), feedback_uniforms(8, 0, 10))


def test_oracle_labels_reproducible(task):
    records = task.records("holdout")
    args = ([r.prompt for r in records], [r.reference for r in records], [r.reference for r in records])
    cfg = OracleConfig(label_mode="bernoulli", oracle_seed=3)
    assert torch.equal(RewardOracle(task.reward, cfg).label(*args).first_wins, RewardOracle(task.reward, cfg).label(*args).first_wins)


def test_compare_rejects_ragged_batches(task, oracle):
    with pytest.raises(ValueError):
        oracle.compare(["x"], ["a", "b"], ["c"])
