"""Duel selection rules (paper §4.3, Alg. 1): pure functions of a reward tensor and a generator.

`rewards` has shape (K heads, P prompts, M candidates): the epistemic reward model's K posterior
samples of r(x, y) for every candidate. `mask` (P, M) marks the candidates that may be picked
(False for a repeat of an earlier candidate of the same prompt: a duel of two equal texts says
nothing). Each rule returns a `DuelChoice` of indices into the M candidates.

Clash rule, shared by all rules: when the rule's own second pick cannot differ from the first
(every sampled head agrees on the argmax, or no candidate carries any uncertainty), the second
response is the best *other* candidate under the ensemble-mean reward, or with `random_clash` a
uniformly drawn other candidate (what the paper's code does), and the prompt is counted as a
clash. A prompt with fewer than two distinct candidates returns first == second and is
counted as a clash; the loop never asks the oracle about it.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

NEG_INF = float("-inf")


class DuelChoice(NamedTuple):
    first: Tensor  # (P,) index of y
    second: Tensor  # (P,) index of y'
    clashed: Tensor  # (P,) bool: the clash rule chose `second`


Rule = Callable[..., DuelChoice]


def _mask(rewards: Tensor, mask: Optional[Tensor]) -> Tensor:
    _, p, m = rewards.shape
    if m < 2:
        raise ValueError("a duel needs at least 2 candidates per prompt")
    return torch.ones(p, m, dtype=torch.bool) if mask is None else mask


def _masked_argmax(scores: Tensor, allowed: Tensor) -> Tensor:
    """argmax over the last axis among allowed entries (first index on ties)."""
    return scores.masked_fill(~allowed, NEG_INF).argmax(dim=-1)


def _without(allowed: Tensor, index: Tensor) -> Tensor:
    """`allowed` (P, M) with the entry `index` (P,) of every row switched off."""
    out = allowed.clone()
    out[torch.arange(len(index)), index] = False
    return out


def _resolve_clash(
    rewards: Tensor, allowed: Tensor, first: Tensor, second: Tensor, clash: Tensor, generator: Optional[torch.Generator] = None
) -> DuelChoice:
    """Where `clash`, replace `second` by the ensemble-mean best candidate other than `first`, or,
    given a `generator`, by a uniformly drawn other candidate."""
    others = _without(allowed, first)
    scores = rewards.mean(0) if generator is None else torch.rand(others.shape, generator=generator)
    fallback = _masked_argmax(scores, others)  # (P,)
    lonely = ~others.any(dim=1)  # fewer than two distinct candidates: nothing else to pick
    fallback = torch.where(lonely, first, fallback)
    return DuelChoice(first, torch.where(clash, fallback, second), clash | lonely)


def _thompson_first(rewards: Tensor, allowed: Tensor, generator: torch.Generator) -> Tensor:
    """Alg. 1 line 4: y = argmax_b r(x, b) under one posterior sample r (a random head per prompt)."""
    k, p, _ = rewards.shape
    heads = torch.randint(k, (p,), generator=generator)
    return _masked_argmax(rewards[heads, torch.arange(p)], allowed)  # (P,)


def passive(rewards: Tensor, generator: torch.Generator, mask: Optional[Tensor] = None) -> DuelChoice:
    """Two distinct candidates drawn uniformly at random: the passive exploration of online DAP
    (Guo et al. 2024, Table 1 variant 1). Only the shape of `rewards` is used."""
    allowed = _mask(rewards, mask)
    noise = torch.rand(allowed.shape, generator=generator).masked_fill(~allowed, -1.0)  # (P, M)
    top = noise.topk(2, dim=1).indices  # a uniformly random ordered pair of allowed candidates
    lonely = allowed.sum(1) < 2
    first = top[:, 0]
    return DuelChoice(first, torch.where(lonely, first, top[:, 1]), lonely)


def ee_ts(
    rewards: Tensor,
    generator: torch.Generator,
    mask: Optional[Tensor] = None,
    max_tries: Optional[int] = None,
    random_clash: bool = False,
) -> DuelChoice:
    """E&E Thompson sampling (Alg. 1 line 5): both responses maximise a sampled reward.

    y' is the argmax under further sampled heads, resampled until it differs from y, at most
    `max_tries` times (default K); if every try agrees with y, the clash rule picks y'.
    """
    allowed = _mask(rewards, mask)
    k, p, _ = rewards.shape
    first = _thompson_first(rewards, allowed, generator)
    second = first.clone()
    for _ in range(max_tries or k):
        pending = second == first  # (P,)
        if not pending.any():
            break
        heads = torch.randint(k, (p,), generator=generator)
        proposal = _masked_argmax(rewards[heads, torch.arange(p)], allowed)
        second = torch.where(pending, proposal, second)
    return _resolve_clash(rewards, allowed, first, second, second == first, generator if random_clash else None)


def preference_variance(rewards: Tensor, first: Tensor) -> Tensor:
    """V_k[σ(r_k(x, y) − r_k(x, b))] for every candidate b against y = `first`; returns (P, M).

    The variance of the *preference probability* (Eq. 3), as Alg. 1 line 6 writes it, not of the
    logit difference: σ saturates where every head is sure of the outcome, so a pair whose
    winner is already certain (though its margin is not) earns no attention: only doubt about
    the label itself, which the oracle's answer resolves, counts.
    """
    p = rewards.shape[1]
    r_first = rewards[:, torch.arange(p), first]  # (K, P)
    probs = torch.sigmoid(r_first[:, :, None] - rewards)  # (K, P, M)
    return probs.var(dim=0, unbiased=False)


def bai_ts(rewards: Tensor, generator: torch.Generator, mask: Optional[Tensor] = None, random_clash: bool = False) -> DuelChoice:
    """BAI Thompson sampling (Alg. 1 line 6): y by one sampled head, y' the candidate whose
    preference against y the ensemble is least sure about (`preference_variance`)."""
    allowed = _mask(rewards, mask)
    first = _thompson_first(rewards, allowed, generator)
    variance = preference_variance(rewards, first)  # (P, M)
    others = _without(allowed, first)
    second = _masked_argmax(variance, others)
    no_doubt = variance.masked_fill(~others, 0.0).amax(dim=1) <= 0  # every head agrees exactly
    return _resolve_clash(rewards, allowed, first, second, no_doubt, generator if random_clash else None)


def logit_variance(rewards: Tensor) -> Tensor:
    """V_k[r_k(x, a) − r_k(x, b)] for every pair (a, b) of candidates; returns (P, M, M)."""
    diff = rewards[:, :, :, None] - rewards[:, :, None, :]  # (K, P, M, M)
    return diff.var(dim=0, unbiased=False)


def uncertainty(rewards: Tensor, generator: torch.Generator, mask: Optional[Tensor] = None, random_clash: bool = False) -> DuelChoice:
    """Pure exploration (§6.3, "Uncertainty"): the pair whose logit difference varies most across
    the ensemble. `generator` is used only by a random clash (the rule is deterministic)."""
    allowed = _mask(rewards, mask)
    _, p, m = rewards.shape
    variance = logit_variance(rewards)  # (P, M, M)
    pair_ok = allowed[:, :, None] & allowed[:, None, :] & ~torch.eye(m, dtype=torch.bool)  # (P, M, M)
    flat = variance.masked_fill(~pair_ok, NEG_INF).flatten(1).argmax(dim=1)  # (P,)
    first, second = flat // m, flat % m
    best = variance.masked_fill(~pair_ok, 0.0).flatten(1).amax(dim=1)
    first = torch.where(pair_ok.flatten(1).any(1), first, _masked_argmax(rewards.mean(0), allowed))
    return _resolve_clash(rewards, allowed, first, second, best <= 0, generator if random_clash else None)


def erm_labelled_pairs(rewards: Tensor, generator: torch.Generator, mask: Optional[Tensor] = None) -> DuelChoice:
    """Pairs for B_ERM (§4.3, self-alignment π ↔ R): per prompt one sampled head r_k labels its own
    best candidate as chosen and its worst as rejected: the pair of largest margin under r_k.
    `first` is the chosen index, `second` the rejected one."""
    allowed = _mask(rewards, mask)
    k, p, _ = rewards.shape
    heads = torch.randint(k, (p,), generator=generator)
    sampled = rewards[heads, torch.arange(p)]  # (P, M)
    chosen = _masked_argmax(sampled, allowed)
    rejected = _masked_argmax(-sampled, allowed)
    tied = sampled.gather(1, chosen[:, None]) == sampled.gather(1, rejected[:, None])  # no preference
    return DuelChoice(chosen, rejected, tied.squeeze(1) | (chosen == rejected))


def ensemble_preference(rewards: Tensor, prompt: Tensor, chosen: Tensor, rejected: Tensor) -> Tensor:
    """P(y ≻ y') under the posterior (Eq. 3 averaged over the K sampled heads):
    (1/K) Σ_k σ(r_k(x, y) − r_k(x, y')) for each (prompt, chosen, rejected) index triple; returns (N,)."""
    return torch.sigmoid(rewards[:, prompt, chosen] - rewards[:, prompt, rejected]).mean(0)


def head_agreement(rewards: Tensor, chosen: Tensor) -> Tensor:
    """Share of the K heads that rank candidate `chosen` (P,) strictly above each candidate; (P, M)."""
    p = rewards.shape[1]
    return (rewards[:, torch.arange(p), chosen][:, :, None] > rewards).double().mean(0)


def gated_erm_pairs(rewards: Tensor, share: float, mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    """Confidence-gated self-labelling (beyond the paper's §4.3): the ERM labels a pair only where
    the ensemble agrees. Per prompt the chosen response is the ensemble-mean best candidate; each
    other candidate that at least `share` of the heads rank strictly below it is a rejected one.
    Returns (prompt, chosen, rejected) index tensors of every such pair, ordered by round: each
    prompt's worst candidate under the mean (the paper's best-vs-worst pair, the surest label)
    first, then the next worst, so a caller that keeps the first n spreads them over the prompts.
    (Taking the closest confident candidate first instead, the most informative pair, gave labels
    right 65 % of the time against 86-87 % for the worst first, on pi_ref's log-prob features and
    seeds 100-101.)"""
    allowed = _mask(rewards, mask)
    mean = rewards.mean(0)  # (P, M)
    chosen = _masked_argmax(mean, allowed)  # (P,)
    passes = _without(allowed, chosen) & (head_agreement(rewards, chosen) >= share)  # (P, M)
    order = mean.masked_fill(~passes, float("inf")).argsort(dim=1, stable=True)  # (P, M) worst passing first
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1]).expand_as(order).contiguous())  # rank of each candidate
    prompt, rejected = passes.nonzero(as_tuple=True)
    by_round = (rank[prompt, rejected] * len(mean) + prompt).argsort(stable=True)
    prompt, rejected = prompt[by_round], rejected[by_round]
    return prompt, chosen[prompt], rejected


def best_worst_ts(rewards: Tensor, generator: torch.Generator, mask: Optional[Tensor] = None, random_clash: bool = False) -> DuelChoice:
    """Beyond the paper: the oracle is asked about one sampled head's best candidate against its
    worst, the pair of largest margin under one posterior sample (the pair `erm_labelled_pairs`
    labels without the oracle; the paper's own code also asks the oracle about such pairs).

    Why: E&E and BAI ask about the best two candidates as the ERM's doubt shrinks, and a DAP step
    on two near-equal responses moves the policy little. With r* itself choosing, the best-vs-worst
    duel took online DPO's 5,000-query win rate to 0.80 where the best-two duel left it at 0.70
    (benchmarks/sea_oracle_erm.py --noise 0, seeds 100-101). A tie or a single distinct candidate
    falls to the clash rule."""
    allowed = _mask(rewards, mask)
    pair = erm_labelled_pairs(rewards, generator, allowed)
    return _resolve_clash(rewards, allowed, pair.first, pair.second, pair.clashed, generator if random_clash else None)


CLASH_RULES = ("ee_ts", "bai_ts", "best_worst_ts", "uncertainty")  # rules whose second pick may fall to the clash rule
RULES: dict[str, Rule] = {
    "passive": passive,
    "ee_ts": ee_ts,
    "bai_ts": bai_ts,
    "best_worst_ts": best_worst_ts,
    "uncertainty": uncertainty,
}


# ---- baselines that select with the policy itself, not with a reward model -------------------


def predictive_entropy(policy_logp: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
    """Monte Carlo predictive entropy of the policy per prompt (APL, Muldrew et al. 2024, §4.1):
    H(π(·|x)) ≈ −(1/M) Σ_i log π(y_i | x) over M responses y_i sampled from π. `policy_logp` is
    (P, M) summed sequence log-probs; returns (P,). With `lengths` (P, M) token counts, the
    per-token estimate −(1/M) Σ_i log π(y_i | x) / |y_i|, which does not favour long answers. High entropy = the policy is unsure what to
    answer, so a label there teaches it most. (Ranking by the mean log-likelihood instead, as one
    earlier implementation does, selects the *least* uncertain prompts: the opposite sign.)"""
    per_response = policy_logp if lengths is None else policy_logp / lengths.clamp(min=1)
    return -per_response.mean(dim=1)


def apl_select(
    policy_logp: Tensor,
    ref_logp: Tensor,
    beta: float,
    keep: int,
    mask: Optional[Tensor] = None,
    lengths: Optional[Tensor] = None,
) -> tuple[Tensor, DuelChoice]:
    """APL's acquisition (Muldrew et al. 2024): of a pool of P prompts keep the `keep` of highest
    `predictive_entropy`, and within each the pair with the largest gap in DPO's implicit reward
    r̂(y) = β (log π_θ(y|x) − log π_ref(y|x)) (both (P, M)). Returns the kept rows, most uncertain
    first, and the pair of each kept row. `lengths` selects the per-token entropy estimate."""
    p, m = policy_logp.shape
    allowed = torch.ones(p, m, dtype=torch.bool) if mask is None else mask
    rows = predictive_entropy(policy_logp, lengths).argsort(descending=True, stable=True)[:keep]  # (keep,)
    implicit = beta * (policy_logp - ref_logp)[rows]  # (keep, M)
    gap = (implicit[:, :, None] - implicit[:, None, :]).abs()  # (keep, M, M)
    ok = allowed[rows][:, :, None] & allowed[rows][:, None, :] & ~torch.eye(m, dtype=torch.bool)
    flat = gap.masked_fill(~ok, NEG_INF).flatten(1).argmax(dim=1)
    first, second = flat // m, flat % m
    lonely = ~ok.flatten(1).any(1)
    first = torch.where(lonely, torch.zeros_like(first), first)
    return rows, DuelChoice(first, torch.where(lonely, first, second), lonely)


def policy_vs_reference(rewards: Tensor, generator: torch.Generator, mask: Optional[Tensor] = None) -> DuelChoice:
    """XPO's duel (Xie et al. 2024): the actor's first candidate, sampled from π_θ, against its last,
    sampled from π_ref. No choice is made, so nothing random is drawn."""
    _, p, m = rewards.shape
    first, second = torch.zeros(p, dtype=torch.long), torch.full((p,), m - 1)
    return DuelChoice(first, second, torch.zeros(p, dtype=torch.bool))


SELECTORS: dict[str, Rule] = {**RULES, "xpo": policy_vs_reference}  # rules of reward tensors, as agents name them
