"""The oracle interface and the Bradley–Terry oracle over a scalar reward (paper Eq. 3)."""

from __future__ import annotations

from typing import Callable, NamedTuple, Protocol, Sequence

import numpy as np
import torch

from sealign.config import OracleConfig

RewardFn = Callable[[Sequence[str], Sequence[str]], Sequence[float]]


class Labels(NamedTuple):
    """An oracle's feedback on a batch of B pairs. Pairs it could not judge (an LLM judge whose
    answer named neither response) get no label at all: nothing is invented for them."""

    first_wins: torch.Tensor  # (A,) bool, True where a is preferred, for the answered pairs only
    answered: torch.Tensor  # (B,) bool


class Oracle(Protocol):
    """Anything that answers P(a > b | x) for a batch of pairs, and labels them."""

    calls: int  # pairs compared so far, evaluation included: the loop charges its own budget
    labelled: int  # labels drawn so far (the index of the next one)
    scores: bool  # whether `score` (a scalar reward per response) is available

    def compare(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> torch.Tensor:
        """P(a > b) per pair, shape (B,); NaN where the oracle gave no usable answer."""
        ...

    def label(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> Labels:
        """Feedback z for the answered pairs."""
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


class PairwiseOracle:
    """Shared by every oracle: labels from `compare`'s probabilities, noise keyed by label index."""

    scores = False

    def __init__(self, cfg: OracleConfig):
        self.cfg = cfg
        self.calls = 0
        self.labelled = 0

    def compare(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> torch.Tensor:
        if not len(prompts) == len(responses_a) == len(responses_b):
            raise ValueError("compare needs as many prompts as responses on each side")
        self.calls += len(prompts)
        return self._probs(list(prompts), list(responses_a), list(responses_b))

    def _probs(self, prompts: list[str], responses_a: list[str], responses_b: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def label(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> Labels:
        probs = self.compare(prompts, responses_a, responses_b)
        answered = ~torch.isnan(probs)
        n = int(answered.sum())
        uniforms = feedback_uniforms(self.cfg.oracle_seed, self.labelled, n)
        self.labelled += n
        return Labels(labels_from_probs(probs[answered], self.cfg.label_mode, self.cfg.flip_prob, uniforms), answered)

    def skip(self, n: int) -> None:
        self.labelled += n


class RewardOracle(PairwiseOracle):
    """A preference oracle from a scalar reward r*: Bradley–Terry over r* (the paper's reward oracle).

    `reward_fn(prompts, responses)` may be a task's hidden reward or a reward model's score.
    """

    scores = True

    def __init__(self, reward_fn: RewardFn, cfg: OracleConfig):
        super().__init__(cfg)
        self.reward_fn = reward_fn

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """r*(x, y) per response, shape (B,); not counted as a comparison (used for oracle best-of-N)."""
        return torch.tensor(list(self.reward_fn(prompts, responses)), dtype=torch.float64)

    def _probs(self, prompts: list[str], responses_a: list[str], responses_b: list[str]) -> torch.Tensor:
        # one call for both sides: a reward model scores them in the same batches
        rewards = self.score(prompts + prompts, responses_a + responses_b)
        n = len(prompts)
        return bradley_terry(rewards[:n], rewards[n:], self.cfg.oracle_temperature)
