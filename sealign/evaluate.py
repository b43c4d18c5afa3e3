"""Win rate of a policy against reference responses, judged by the oracle (paper §5.2, Metrics)."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from sealign.config import EvalConfig
from sealign.data import PromptRecord
from sealign.oracles import Oracle
from sealign.policy import generate
from sealign.records import Candidates

Scorer = Callable[[Sequence[str], Sequence[str]], torch.Tensor]


def win_stats(probs: torch.Tensor) -> dict[str, float]:
    """Summaries of P(policy > reference) per prompt, shape (N,).

    win_prob = mean P; win_rate = fraction of prompts where P > 1/2, ties (P = 1/2) counted half.
    Prompts the oracle could not judge (NaN) are left out of both and counted as `unanswered`.
    """
    answered = ~torch.isnan(probs)
    probs = probs[answered]
    wins = (probs > 0.5).double() + 0.5 * (probs == 0.5).double()
    return {"win_prob": probs.double().mean().item(), "win_rate": wins.mean().item(), "unanswered": int((~answered).sum())}


def best_of_n(candidates: Sequence[Sequence[str]], prompts: Sequence[str], scorer: Scorer) -> list[str]:
    """BoN inference: per prompt, the candidate the scorer ranks highest (first one on ties)."""
    sets = Candidates(list(prompts), [list(row) for row in candidates])
    scores = scorer(*sets.flat()).reshape(len(prompts), sets.num_candidates)  # (P, N)
    return [row[i] for row, i in zip(candidates, scores.argmax(dim=1).tolist())]


def evaluate_policy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    oracle: Oracle,
    records: Sequence[PromptRecord],
    cfg: EvalConfig,
    *,
    max_new_tokens: int,
    scorer: Scorer | None = None,
    samples: int = 0,
) -> dict[str, float]:
    """Win rate of the policy's responses against `records`' references.

    Greedy by default; with `cfg.best_of > 1` it samples N responses per prompt and keeps the
    one `scorer` ranks first (Best-of-N, Table 1). Oracle calls made here are evaluation calls.
    With `samples`, the first that many (prompt, response, reference, P(win)) come back too.
    """
    prompts = [r.prompt for r in records]
    if cfg.best_of > 1 and scorer is None:
        raise ValueError("best-of-N evaluation needs a scorer")
    greedy = not cfg.sample and cfg.best_of == 1
    candidates = generate(
        model,
        tokenizer,
        prompts,
        num_samples=cfg.best_of,
        greedy=greedy,
        temperature=cfg.temperature,
        max_new_tokens=max_new_tokens,
        batch_size=max(1, cfg.eval_batch_size // cfg.best_of),
        generator_seed=None if greedy else cfg.eval_seed,
    )
    responses = best_of_n(candidates, prompts, scorer) if cfg.best_of > 1 else [c[0] for c in candidates]
    return evaluate_responses(oracle, records, responses, samples)


def evaluate_responses(oracle: Oracle, records: Sequence[PromptRecord], responses: Sequence[str], samples: int = 0) -> dict:
    """Win statistics of given responses against the records' references, plus their mean length
    in words (and the first `samples` completions, each with its P(win))."""
    probs = oracle.compare([r.prompt for r in records], responses, [r.reference for r in records])
    stats = {**win_stats(probs), "mean_length": sum(len(r.split()) for r in responses) / len(responses)}
    if samples:
        stats["samples"] = [
            {"prompt": r.prompt, "response": y, "reference": r.reference, "win_prob": None if p != p else round(p, 4)}
            for r, y, p in zip(records[:samples], responses, probs.tolist())
        ]
    return stats
