"""Duel selection rules (paper §4.3, Alg. 1): pure functions of a reward tensor and a generator.

`rewards` has shape (K heads, P prompts, M candidates); each rule returns the indices
(first, second) of the two dueling responses per prompt, each (P,).
"""

from __future__ import annotations

import torch


def passive(rewards: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two distinct candidates drawn uniformly at random: the passive exploration of online DAP
    (Guo et al. 2024, Table 1 variant 1). Only the shape of `rewards` is used."""
    _, num_prompts, m = rewards.shape
    if m < 2:
        raise ValueError("a duel needs at least 2 candidates per prompt")
    first = torch.randint(m, (num_prompts,), generator=generator)
    offset = torch.randint(1, m, (num_prompts,), generator=generator)  # never 0: second != first
    return first, (first + offset) % m
