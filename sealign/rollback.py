"""Beyond the paper: a rollback guard for online DAP.

Online DPO at a constant rate sometimes drifts from pi_ref in a burst: the Monte Carlo KL of a
step jumps from its usual 3-6 nats to 8-20 within a few steps, and the win rate falls with it
(docs/results.md). Halving the rate once the drift is seen only slows a policy that has already
left (the `--kl-guard` screen, reverted). This guard instead keeps the learner's state from one
to two snapshot intervals back and returns to it when a step's KL passes a threshold, at half
the rate from then on; the labels already spent stay spent. Pure bookkeeping: what to keep and
when to return; the learner copies the tensors.

A fixed threshold in nats fits one task: where a run's KL settles higher, every step would pass
it and the rate would halve again and again. With `ratio` the threshold follows the run's own
level, ratio x the median KL of its last RECENT steps, never below the fixed one; a burst is a
jump above the run's level, not a level.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

ROLLBACK_EVERY = 20  # learner steps between snapshots, and at least this many between two rollbacks
RECENT = 2 * ROLLBACK_EVERY  # steps whose median KL is the run's level (with `ratio`)


@dataclass
class Snapshot:
    """The learner's trainable weights and optimizer state after learner step `step` (on the CPU)."""

    step: int
    weights: dict
    optimizer: dict


@dataclass
class RollbackGuard:
    """Decides when to snapshot and when to roll back; `scale` is the rate's factor so far."""

    threshold: float  # nats of a step's KL(pi_theta || pi_ref) that start a rollback (with `ratio`: the least)
    ratio: float | None = None  # the threshold is at least ratio x the median KL of the last RECENT steps
    recent: list = field(default_factory=list)  # the last RECENT steps' KL, oldest first
    snapshots: list = field(default_factory=list)  # the last two Snapshots, oldest first
    scale: float = 1.0
    rollbacks: int = 0
    since: int = ROLLBACK_EVERY  # steps since the last rollback (a rollback may come at once)

    def wants_snapshot(self, step: int) -> bool:
        """Whether the state after learner step `step` (0: before the first) is kept."""
        return step % ROLLBACK_EVERY == 0

    def limit(self) -> float:
        """The KL a step must pass to start a rollback, given the steps before it."""
        if self.ratio is None or len(self.recent) < RECENT:
            return self.threshold
        return max(self.threshold, self.ratio * statistics.median(self.recent))

    def keep(self, snapshot: Snapshot) -> None:
        self.snapshots = [*self.snapshots, snapshot][-2:]

    def target(self, kl: float) -> Snapshot | None:
        """After a step whose KL was `kl`: the snapshot to return to (the older one kept, one to
        two intervals back, from before the burst began), or None to go on. Returning halves the
        rate and starts a quiet interval: batches sampled before the actor returns with the
        learner still show the drift."""
        self.since += 1
        limit = self.limit()
        self.recent = [*self.recent, kl][-RECENT:]
        if kl <= limit or self.since < ROLLBACK_EVERY or not self.snapshots:
            return None
        back = self.snapshots[0]
        self.snapshots = [back]  # the next rollback, if any, returns here again
        self.scale /= 2
        self.rollbacks += 1
        self.since = 0
        return back
