"""The oracle interface and the Bradley–Terry oracle over a scalar reward (paper Eq. 3)."""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import numpy as np
import torch

from sealign.config import OracleConfig

RewardFn = Callable[[Sequence[str], Sequence[str]], Sequence[float]]


class Oracle(Protocol):
    """Anything that answers P(a > b | x) for a batch of pairs, and labels them."""

    calls: int  # pairs compared so far, evaluation included: the loop charges its own budget
    labelled: int  # labels drawn so far (the index of the next one)

    def compare(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> torch.Tensor:
        """P(a > b) per pair, shape (B,)."""
        ...

    def label(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> torch.Tensor:
        """Feedback z per pair, shape (B,), True where a is preferred."""
        ...

    def skip(self, n: int) -> None:
        """Account for n labels recorded earlier (a resumed run replays them instead of asking)."""
        ...


def bradley_terry(reward_a: torch.Tensor, reward_b: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """P(a > b) = sigma((r(a) - r(b)) / tau): Eq. 3 with a temperature tau on the reward scale."""
    return torch.sigmoid((reward_a - reward_b) / temperature)


def feedback_uniforms(seed: int, start: int, n: int) -> torch.Tensor:
    """Uniform draws for labels start .. start + n - 1, shape (n, 2), a pure function of (seed, index).

    Keying the noise by label index (not by a running generator) means a resumed run that
    replays recorded labels draws exactly the noise an uninterrupted run would have drawn next.
    """
    rows = [np.random.default_rng([seed, start + i]).random(2) for i in range(n)]
    return torch.tensor(np.array(rows).reshape(n, 2))


def labels_from_probs(probs: torch.Tensor, mode: str, flip_prob: float, uniforms: torch.Tensor) -> torch.Tensor:
    """Turn P(a > b), shape (B,), into binary feedback z (True = a preferred), shape (B,).

    argmax: z = [P > 1/2], ties (P = 1/2 exactly) broken by a fair coin so neither position is
    favoured; bernoulli: z ~ Ber(P), the paper's stochastic feedback (§2.1) and a noisy human.
    Each label is then flipped with probability `flip_prob` (annotator error). `uniforms` (B, 2)
    supplies the randomness: column 0 for the coin or the Bernoulli draw, column 1 for the flip.
    """
    coin, flip = uniforms[:, 0], uniforms[:, 1]
    if mode == "argmax":
        z = torch.where(probs == 0.5, coin < 0.5, probs > 0.5)
    elif mode == "bernoulli":
        z = coin < probs
    else:
        raise ValueError(f"unknown label mode {mode!r}")
    return z ^ (flip < flip_prob)


class RewardOracle:
    """A preference oracle from a scalar reward r*: Bradley–Terry over r* (the paper's reward oracle).

    `reward_fn(prompts, responses)` may be a task's hidden reward or a reward model's score.
    """

    def __init__(self, reward_fn: RewardFn, cfg: OracleConfig):
        self.reward_fn = reward_fn
        self.cfg = cfg
        self.calls = 0
        self.labelled = 0

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """r*(x, y) per response, shape (B,); not counted as a comparison (used for oracle best-of-N)."""
        return torch.tensor(list(self.reward_fn(prompts, responses)), dtype=torch.float64)

    def compare(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> torch.Tensor:
        if not len(prompts) == len(responses_a) == len(responses_b):
            raise ValueError("compare needs as many prompts as responses on each side")
        self.calls += len(prompts)
        reward_a = self.score(prompts, responses_a)
        reward_b = self.score(prompts, responses_b)
        return bradley_terry(reward_a, reward_b, self.cfg.oracle_temperature)

    def label(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> torch.Tensor:
        probs = self.compare(prompts, responses_a, responses_b)
        uniforms = feedback_uniforms(self.cfg.oracle_seed, self.labelled, len(probs))
        self.labelled += len(probs)
        return labels_from_probs(probs, self.cfg.label_mode, self.cfg.flip_prob, uniforms)

    def skip(self, n: int) -> None:
        self.labelled += n
