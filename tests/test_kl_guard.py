"""The divergence guard (`--kl-guard`): when the KL's running mean crosses the threshold the
learning rate halves, at most once per window, for the rest of the run, and a resumed learner
halves exactly where the uninterrupted one does."""

from __future__ import annotations

import copy
import math

import pytest
from test_microbatch import pairs, tiny_gpt2, tokenizer  # noqa: F401 (fixtures)

from sealign.learner import GUARD_WINDOW, KLGuard, Learner, LearnerConfig


def test_guard_halves_once_the_running_mean_crosses_and_then_once_per_window():
    """A constant KL of 2 nats against a threshold of 1: the running mean is 2 (1 - 0.9^n) after n
    steps, above 1 from step 7 (0.9^7 = 0.478), but the first halving waits for a whole window
    (step 10); the next comes 10 steps later while the mean stays above."""
    guard = KLGuard(threshold=1.0)
    halved = [n for n in range(1, 31) if guard.update(2.0)]
    assert GUARD_WINDOW == 10 and halved == [10, 20, 30]
    assert guard.scale == 0.125 and guard.mean == pytest.approx(2 * (1 - 0.9**30))
    calm = KLGuard(threshold=1.0)
    assert not any(calm.update(0.99) for _ in range(100)) and calm.scale == 1.0  # below it: never


def test_guard_sees_a_spike_through_its_running_mean():
    """One step at 20 nats among steps at 0 moves the mean by 2, not 20: a threshold of 3 is never
    crossed. Two such steps in a row cross it (mean 0.70 -> 2.63 -> 4.36), and the next ones do
    not halve again within the window."""
    guard = KLGuard(threshold=3.0)
    assert not any(guard.update(kl) for kl in [0.0] * 10 + [20.0] + [0.0] * 10)
    assert [guard.update(kl) for kl in [20.0] * 4] == [False, True, False, False] and guard.scale == 0.5


def _learner(model, tokenizer) -> Learner:  # noqa: F811
    """Constant rate 1e-3 and a guard that is always crossed (-inf), so it halves every window."""
    cfg = LearnerConfig("dpo", 0.1, 1e-3, "constant", 0, 100, kl_guard=-math.inf)
    return Learner(copy.deepcopy(model), tokenizer, cfg)


def test_learner_halves_its_rate_and_a_resumed_one_halves_at_the_same_steps(tokenizer, pairs):  # noqa: F811
    model = tiny_gpt2(tokenizer)
    whole = _learner(model, tokenizer)
    rates = [whole.step(pairs)["lr"] for _ in range(22)]  # the rate each step used
    assert rates == [1e-3] * 10 + [5e-4] * 10 + [2.5e-4] * 2

    first = _learner(model, tokenizer)
    for _ in range(12):
        out = first.step(pairs)
    assert out["lr_scale"] == 0.5 and "kl_mean" in out
    resumed = _learner(model, tokenizer)
    resumed.load_state_dict(copy.deepcopy(first.state_dict()))
    assert [resumed.step(pairs)["lr"] for _ in range(10)] == rates[12:]


def test_without_the_guard_nothing_changes(tokenizer, pairs):  # noqa: F811
    cfg = LearnerConfig("dpo", 0.1, 1e-3, "constant", 0, 100)
    learner = Learner(tiny_gpt2(tokenizer), tokenizer, cfg)
    out = [learner.step(pairs) for _ in range(12)]
    assert learner.guard is None and [o["lr"] for o in out] == [1e-3] * 12 and "lr_scale" not in out[-1]
    assert learner.state_dict()["guard"] is None
