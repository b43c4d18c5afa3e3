"""The rollback guard (`--rollback-kl`): a step whose KL passes the threshold returns the learner to
its older snapshot (weights and optimizer state exactly), halves the rate, waits a whole interval
before it can return again, and a learner restored from a checkpoint returns where the
uninterrupted one does."""

from __future__ import annotations

import copy

import torch
from test_microbatch import pairs, tiny_gpt2, tokenizer  # noqa: F401 (fixtures)

from sealign import rollback
from sealign.learner import Learner, LearnerConfig
from sealign.rollback import RECENT, ROLLBACK_EVERY, RollbackGuard, Snapshot
from sealign.runfolder import read_checkpoint, write_checkpoint


def _snap(step: int) -> Snapshot:
    return Snapshot(step, {}, {})


def test_guard_keeps_two_snapshots_and_returns_to_the_older():
    guard = RollbackGuard(threshold=5.0)
    for step in range(0, 61, ROLLBACK_EVERY):
        guard.keep(_snap(step))
    assert [s.step for s in guard.snapshots] == [40, 60]
    assert guard.target(5.0) is None  # at the threshold: not above it
    back = guard.target(5.1)
    assert back.step == 40 and guard.snapshots == [back]
    assert guard.scale == 0.5 and guard.rollbacks == 1


def test_guard_waits_a_whole_interval_between_rollbacks():
    """After a rollback, steps above the threshold are let pass for ROLLBACK_EVERY - 1 steps (the
    batches sampled before the actors returned); the next one returns again, to the same place."""
    guard = RollbackGuard(threshold=1.0)
    guard.keep(_snap(0))
    returned = [n for n in range(1, 2 * ROLLBACK_EVERY + 2) if guard.target(9.0) is not None]
    assert returned == [1, 1 + ROLLBACK_EVERY, 1 + 2 * ROLLBACK_EVERY]
    assert guard.scale == 0.125 and [s.step for s in guard.snapshots] == [0]
    assert RollbackGuard(threshold=1.0).target(9.0) is None  # nothing kept: nowhere to go


def test_relative_threshold_follows_the_runs_median_kl():
    """With a ratio the threshold is ratio x the median KL of the last RECENT steps, never below
    the fixed one: a run settled at 10 nats goes on at 15 and returns at 16.5."""
    guard = RollbackGuard(threshold=8.0, ratio=1.6, recent=[10.0] * RECENT)
    guard.keep(_snap(0))
    assert guard.limit() == 1.6 * 10.0
    assert guard.target(15.0) is None and guard.recent[-1] == 15.0 and len(guard.recent) == RECENT
    assert guard.target(16.5) is not None and guard.rollbacks == 1
    assert RollbackGuard(threshold=8.0, ratio=1.6, recent=[20.0] * (RECENT - 1)).limit() == 8.0  # too few steps seen
    assert RollbackGuard(threshold=8.0, ratio=1.6, recent=[2.0] * RECENT).limit() == 8.0  # never below the fixed one
    assert RollbackGuard(threshold=8.0, recent=[20.0] * RECENT).limit() == 8.0  # no ratio: fixed


def _learner(model, tokenizer, threshold: float | None) -> Learner:  # noqa: F811
    return Learner(copy.deepcopy(model), tokenizer, LearnerConfig("dpo", 0.1, 1e-3, "constant", 0, 100, rollback_kl=threshold))


def _weights(learner: Learner) -> list[torch.Tensor]:
    return [p.detach().clone() for p in learner.model.parameters()]


def test_learner_returns_to_its_snapshot_exactly_at_half_the_rate(tokenizer, pairs):  # noqa: F811
    """The first step's KL is 0 (pi_theta is pi_ref), the second's positive: a threshold of 1e-9
    sends the learner back to its start, weights and Adam moments, and the third step then moves
    exactly like the first at half the rate."""
    model = tiny_gpt2(tokenizer)
    learner = _learner(model, tokenizer, 1e-9)
    start = _weights(learner)
    first = learner.step(pairs)
    assert first["kl"] == 0.0 and first["rolled_back"] == 0.0 and first["lr"] == 1e-3
    second = learner.step(pairs)
    assert second["kl"] > 0 and second["rolled_back"] == 1.0 and second["lr_scale"] == 0.5
    assert all(torch.equal(a, b) for a, b in zip(start, _weights(learner)))
    assert not learner.optimizer.state  # the snapshot was taken before any Adam step
    third = learner.step(pairs)
    assert third["lr"] == 5e-4 and third["rolled_back"] == 0.0 and learner.steps == 3

    half = _learner(model, tokenizer, None)
    half.optimizer.param_groups[0]["lr"] = 5e-4
    half.step(pairs)
    assert all(torch.equal(a, b) for a, b in zip(_weights(half), _weights(learner)))


def test_a_restored_learner_returns_where_the_whole_one_does(tokenizer, pairs, tmp_path, monkeypatch):  # noqa: F811
    """The snapshots travel in the checkpoint, Adam moments and all: two learners keep snapshots
    every 2 steps without returning (threshold 1e9) for 5 steps; one is written to disk with the
    run folder's checkpoint format and read into a third whose start differs; then the threshold
    drops to 1e-9, and both return to the step-2 snapshot and go on alike."""
    monkeypatch.setattr(rollback, "ROLLBACK_EVERY", 2)
    model = tiny_gpt2(tokenizer)
    whole, cut = _learner(model, tokenizer, 1e9), _learner(model, tokenizer, 1e9)
    for _ in range(5):
        whole.step(pairs), cut.step(pairs)
    assert [s.step for s in whole.guard.snapshots] == [2, 4] and whole.guard.snapshots[0].optimizer["state"]
    write_checkpoint(tmp_path / "checkpoint", cut.state_dict())
    resumed = _learner(model, tokenizer, 3.0)
    with torch.no_grad():
        for p in resumed.model.parameters():
            p.add_(1.0)  # its own start differs: only the checkpoint can bring it back
    resumed.load_state_dict(read_checkpoint(tmp_path / "checkpoint"))
    whole.guard.threshold = resumed.guard.threshold = 1e-9
    figures, again = [whole.step(pairs) for _ in range(5)], [resumed.step(pairs) for _ in range(5)]
    assert figures == again and figures[0]["rolled_back"] == 1.0 and whole.guard.rollbacks == resumed.guard.rollbacks >= 2
    assert (whole.guard.since, whole.guard.scale) == (resumed.guard.since, resumed.guard.scale)
    assert [s.step for s in whole.guard.snapshots] == [s.step for s in resumed.guard.snapshots]
    assert whole.guard.recent == resumed.guard.recent and len(whole.guard.recent) == 10
    assert all(torch.equal(a, b) for a, b in zip(_weights(whole), _weights(resumed)))


def test_a_snapshot_is_unchanged_by_the_steps_after_a_return_to_it(tokenizer, pairs):  # noqa: F811
    """torch's optimizer adopts the state it loads; the learner gives it a copy, so a second return
    to the same snapshot finds its Adam moments as they were when it was taken."""
    learner = _learner(tiny_gpt2(tokenizer), tokenizer, 1e9)  # never crossed by a step's own KL
    learner.step(pairs)
    snapshot = learner._snapshot()
    kept = copy.deepcopy(snapshot)
    learner.guard.snapshots = [snapshot]
    assert learner._guard(2e9)["rolled_back"] == 1.0  # returned to it
    learner.step(pairs)
    learner.step(pairs)
    moments = [snapshot.optimizer["state"][0][k] for k in ("step", "exp_avg", "exp_avg_sq")]
    assert all(torch.equal(a, kept.optimizer["state"][0][k]) for a, k in zip(moments, ("step", "exp_avg", "exp_avg_sq")))
    assert all(torch.equal(snapshot.weights[n], kept.weights[n]) for n in kept.weights)


def test_without_the_guard_nothing_changes(tokenizer, pairs):  # noqa: F811
    learner = _learner(tiny_gpt2(tokenizer), tokenizer, None)
    out = [learner.step(pairs) for _ in range(3)]
    assert learner.guard is None and learner.state_dict()["guard"] is None
    assert [o["lr"] for o in out] == [1e-3] * 3 and "rolled_back" not in out[-1]

