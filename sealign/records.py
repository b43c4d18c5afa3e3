"""Typed records that flow through the loop: actor -> explorer -> oracle -> learner.

Plain lists of strings keep them serialisable, so the roles can later live in other processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class Candidates:
    """The candidate set S of §4.3: M responses sampled from the actor's policy for each prompt."""

    prompts: list[str]  # (P,)
    responses: list[list[str]]  # (P, M)
    version: int = 0  # the policy version (learner steps) that sampled them

    @property
    def num_candidates(self) -> int:
        return len(self.responses[0])

    def flat(self) -> tuple[list[str], list[str]]:
        """(prompt, response) of every candidate, prompt-major: two lists of P * M."""
        m = self.num_candidates
        return [x for x in self.prompts for _ in range(m)], [y for row in self.responses for y in row]

    def first_occurrences(self) -> torch.Tensor:
        """(P, M) bool: False where a response repeats an earlier candidate of the same prompt."""
        return torch.tensor([[row.index(r) == j for j, r in enumerate(row)] for row in self.responses], dtype=torch.bool)


@dataclass
class Duels:
    """The two dueling responses (y, y') chosen per prompt, before the oracle has spoken."""

    prompts: list[str]  # (P,)
    first: list[str]  # (P,)
    second: list[str]  # (P,)
    version: int = 0  # the policy version that sampled them, recorded with every label

    @classmethod
    def pick(cls, candidates: Candidates, first: torch.Tensor, second: torch.Tensor) -> "Duels":
        """Gather the responses at indices `first`, `second` (each (P,)) of the candidate set."""
        rows = candidates.responses
        return cls(
            prompts=list(candidates.prompts),
            first=[row[i] for row, i in zip(rows, first.tolist())],
            second=[row[i] for row, i in zip(rows, second.tolist())],
            version=candidates.version,
        )

    def subset(self, indices: list[int]) -> "Duels":
        return Duels(
            [self.prompts[i] for i in indices], [self.first[i] for i in indices], [self.second[i] for i in indices], self.version
        )


@dataclass
class Preferences:
    """Labelled pairs (x, y+, y-) for the learner (the batch B^t of Eq. 8)."""

    prompts: list[str]  # (B,)
    chosen: list[str]  # (B,)
    rejected: list[str]  # (B,)
    # P(chosen > rejected) where a label is uncertain (an ERM's soft label); None: every label is sure
    confidence: Optional[list[float]] = None  # (B,)

    def __post_init__(self) -> None:
        if self.confidence is not None and len(self.confidence) != len(self.prompts):
            raise ValueError(f"{len(self.confidence)} label probabilities for {len(self.prompts)} pairs")

    def __len__(self) -> int:
        return len(self.prompts)

    def probabilities(self) -> list[float]:
        """P(chosen > rejected) of every pair, 1 where the label is sure."""
        return [1.0] * len(self) if self.confidence is None else self.confidence

    @property
    def valid(self) -> torch.Tensor:
        """(B,) bool: False where both responses are identical, a pair that carries no preference."""
        return torch.tensor([c != r for c, r in zip(self.chosen, self.rejected)], dtype=torch.bool)

    @classmethod
    def from_labels(cls, duels: Duels, first_wins: torch.Tensor) -> "Preferences":
        """Order each duel by the oracle's feedback z (True = first preferred), shape (P,)."""
        z = first_wins.tolist()
        return cls(
            prompts=list(duels.prompts),
            chosen=[a if w else b for a, b, w in zip(duels.first, duels.second, z)],
            rejected=[b if w else a for a, b, w in zip(duels.first, duels.second, z)],
        )

    def subset(self, indices: list[int]) -> "Preferences":
        confidence = None if self.confidence is None else [self.confidence[i] for i in indices]
        return Preferences([self.prompts[i] for i in indices], [self.chosen[i] for i in indices], [self.rejected[i] for i in indices], confidence)

    def __add__(self, other: "Preferences") -> "Preferences":
        confidence = None if self.confidence is None and other.confidence is None else self.probabilities() + other.probabilities()
        return Preferences(self.prompts + other.prompts, self.chosen + other.chosen, self.rejected + other.rejected, confidence)
