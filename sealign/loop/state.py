"""Where a run is (saved in every checkpoint), and the clocks of its phases."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from sealign.data import PromptRecord

TIMERS = ("generate", "select", "oracle", "learn", "eval")


@dataclass
class LoopState:
    """Counters of the loop; everything here is saved in the checkpoint."""

    collected: int = 0  # labelled pairs asked for (never above the budget)
    learned: int = 0  # labelled pairs the learner has consumed: the x-axis "queries"
    step: int = 0  # learner updates
    eval_calls: int = 0  # oracle comparisons spent on evaluation, never charged to the budget
    identical_skipped: int = 0  # sampled duels of two identical responses: not asked, not charged
    unanswered: int = 0  # duels the oracle could not judge (an unparseable judge answer): not charged
    clashes: int = 0  # prompts whose second response came from the clash rule (sealign.explore)
    restarts: int = 0  # Ray actors (policy or oracle) restarted after they died; their work was re-issued
    idle_batches: int = 0  # consecutive batches that had nothing to ask
    timers: dict = field(default_factory=lambda: dict.fromkeys(TIMERS, 0.0))
    since_eval: dict = field(default_factory=dict)  # figure -> [sum, count] since the last evaluation
    wall: float = 0.0  # seconds of earlier sessions of this run

    def record(self, figures: dict[str, float]) -> None:
        for key, value in figures.items():
            total, n = self.since_eval.get(key, (0.0, 0))
            self.since_eval[key] = [total + value, n + 1]

    def averages(self) -> dict[str, float]:
        """Mean of every figure since the last evaluation, then forget them."""
        out = {key: total / n for key, (total, n) in self.since_eval.items()}
        self.since_eval = {}
        return out

    def timer(self, name: str) -> "Timer":
        return Timer(self.timers, name)


class Timer:
    """Adds the seconds spent inside `with` to one phase's clock."""

    def __init__(self, timers: dict, name: str):
        self.timers, self.name = timers, name

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        self.timers[self.name] += time.perf_counter() - self.start


def crossed(before: int, after: int, every: int) -> bool:
    """Whether a multiple of `every` lies in (before, after]."""
    return after // every > before // every


class PromptStream:
    """Training prompts in a fresh shuffled order every epoch, determined by (seed, epoch)."""

    def __init__(self, records: list[PromptRecord], seed: int):
        self.records = records
        self.seed = seed
        self.epoch, self.offset = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.records))

    def take(self, n: int) -> list[PromptRecord]:
        out = []
        while len(out) < n:
            if self.offset == len(self.records):
                self.epoch, self.offset = self.epoch + 1, 0
                self._order = self._permutation()
            k = min(n - len(out), len(self.records) - self.offset)
            out.extend(self.records[i] for i in self._order[self.offset : self.offset + k])
            self.offset += k
        return out

    @property
    def consumed(self) -> int:
        """Prompts handed out so far, over all epochs: what a benchmark compares between frameworks."""
        return self.epoch * len(self.records) + self.offset

    def state(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def restore(self, state: dict) -> None:
        self.epoch, self.offset = state["epoch"], state["offset"]
        self._order = self._permutation()
