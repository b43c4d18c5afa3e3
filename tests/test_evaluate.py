"""Win rate against references: the statistics, and known-good / known-bad policies."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY
from sealign.config import EvalConfig
from sealign.evaluate import best_of_n, evaluate_policy, evaluate_responses, win_stats
from sealign.policy import build_policy


def test_win_stats_hand_worked():
    """P = (0.9, 0.5, 0.2, 0.7): win_prob = 2.3 / 4 = 0.575; wins = 1 + 0.5 + 0 + 1 = 2.5 -> 0.625."""
    stats = win_stats(torch.tensor([0.9, 0.5, 0.2, 0.7]))
    assert stats["win_prob"] == pytest.approx(0.575)
    assert stats["win_rate"] == pytest.approx(0.625)


def test_known_good_and_known_bad_responses(task, oracle):
    records = task.records("holdout")
    good = evaluate_responses(oracle, records, [task.optimal_summary(r.prompt) for r in records])
    bad = evaluate_responses(oracle, records, ["" for _ in records])
    same = evaluate_responses(oracle, records, [r.reference for r in records])
    assert good["win_rate"] > 0.9 and good["win_prob"] > 0.8
    assert bad["win_rate"] == 0.0
    assert same["win_rate"] == 0.5 and same["win_prob"] == 0.5  # ties count half


def test_best_of_n_picks_the_top_score(task, oracle):
    record = task.records("holdout")[0]
    candidates = [["", record.reference, task.optimal_summary(record.prompt)]]
    assert best_of_n(candidates, [record.prompt], oracle.score) == [task.optimal_summary(record.prompt)]


def test_untrained_policy_loses(task, oracle):
    torch.manual_seed(0)
    model = build_policy(TINY, task.build_tokenizer())
    stats = evaluate_policy(
        model, task.build_tokenizer(), oracle, task.records("holdout"), EvalConfig(), max_new_tokens=task.max_new_tokens
    )
    assert stats["win_rate"] < 0.1
    assert oracle.calls == len(task.records("holdout"))
