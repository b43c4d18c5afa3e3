"""The explorer (paper §4.3, Alg. 1): turns the actor's candidate set into duels, and learns the
epistemic reward model from the oracle's answers.

It owns the selection rule, its random generator, and (for active agents) the backbone and the
ERM. The loop hands it candidates and labels; it hands back duels, ERM-labelled pairs for
self-alignment, and a scorer for best-of-N inference.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from sealign.config import ERMConfig
from sealign.erm import Backbone, EpistemicRewardModel
from sealign.errors import SealignError
from sealign.explore import CLASH_RULES, SELECTORS, DuelChoice, apl_select, ensemble_preference, erm_labelled_pairs, gated_erm_pairs
from sealign.records import Candidates, Duels, Preferences


@dataclass
class Selection:
    """One batch's candidates, the chosen duels and what the ERM thought of every candidate."""

    candidates: Candidates
    choice: DuelChoice
    duels: Duels  # (P,) the selected pair of every prompt
    mask: Tensor  # (P, M) first occurrences of each distinct response
    rewards: Tensor  # (K, P, M): K = 0 without a reward model
    features: Optional[Tensor]  # (P, M, d) backbone features, None without a reward model
    rows: list[int]  # prompts in the order they should be asked (APL: most uncertain first)


LogProbs = Callable[[Sequence[str], Sequence[str]], tuple[Tensor, Tensor, Tensor]]


class Explorer:
    """`rule` names a selector of sealign.explore, or "apl", which ranks with the policy itself
    and needs `policy_logprobs(prompts, responses) -> (log pi_theta, log pi_ref, lengths)`, `beta`
    and the entropy estimate, "sequence" or "token" (sealign.explore.predictive_entropy).
    `response_tokens` (the response limit and its <eos>) sizes the ERM's features under pooling
    "tokens"."""

    def __init__(
        self,
        rule: str,
        seed: int,
        erm_cfg: Optional[ERMConfig] = None,
        backbone_path: Optional[str | Path] = None,
        pooling: str = "mean",
        *,
        policy_logprobs: Optional[LogProbs] = None,
        beta: float = 0.1,
        entropy: str = "sequence",
        device: str = "cpu",
        random_clash: bool = False,
        response_tokens: int = 0,
    ):
        self.rule = None if rule == "apl" else SELECTORS[rule]
        if random_clash:
            if rule not in CLASH_RULES:
                raise SealignError(f"--clash random: rule {rule} has no clash rule (those with one: {', '.join(CLASH_RULES)})")
            self.rule = functools.partial(self.rule, random_clash=True)
        self.policy_logprobs, self.beta, self.per_token = policy_logprobs, beta, entropy == "token"
        self.generator = torch.Generator().manual_seed(seed)
        self.backbone: Optional[Backbone] = None
        self.erm: Optional[EpistemicRewardModel] = None
        if erm_cfg is not None:
            self.backbone = Backbone(
                backbone_path,
                pooling,
                device=device,
                layer=erm_cfg.erm_layer,
                logprobs=erm_cfg.erm_logprobs,
                tokens=response_tokens if pooling == "tokens" else 0,
                grounding=erm_cfg.erm_grounding,
            )
            self.erm = EpistemicRewardModel(self.backbone.width, erm_cfg, seed, self.backbone.tokens)

    # -- selection ------------------------------------------------------------------------------

    def features(self, prompts: Sequence[str], responses: Sequence[str]) -> Tensor:
        """Backbone features, computed once per distinct (prompt, response); shape (B, d)."""
        keys = list(zip(prompts, responses))
        unique = list(dict.fromkeys(keys))
        where = {key: i for i, key in enumerate(unique)}
        feats = self.backbone.features([p for p, _ in unique], [r for _, r in unique])
        return feats[torch.tensor([where[key] for key in keys])]

    def select(self, candidates: Candidates) -> Selection:
        """Score every candidate under every head and apply the selection rule (Alg. 1 lines 4-6)."""
        p, m = len(candidates.prompts), candidates.num_candidates
        features = None
        if self.erm is None:
            rewards = torch.empty(0, p, m)
        else:
            features = self.features(*candidates.flat()).reshape(p, m, -1)  # (P, M, d)
            rewards = self.erm.rewards(features)  # (K, P, M)
        mask = candidates.first_occurrences()
        rows = list(range(p))
        if self.rule is None:
            choice, rows = self._apl(candidates, mask)
        else:
            choice = self.rule(rewards, self.generator, mask)
        return Selection(candidates, choice, Duels.pick(candidates, choice.first, choice.second), mask, rewards, features, rows)

    def _apl(self, candidates: Candidates, mask: Tensor) -> tuple[DuelChoice, list[int]]:
        """APL over the whole pool: every prompt ranked by entropy, its pair by implicit-reward gap."""
        p, m = len(candidates.prompts), candidates.num_candidates
        policy_logp, ref_logp, lengths = (t.reshape(p, m) for t in self.policy_logprobs(*candidates.flat()))
        lengths = lengths.float() if self.per_token else None
        order, picked = apl_select(policy_logp, ref_logp, self.beta, keep=p, mask=mask, lengths=lengths)
        first, second, clashed = (torch.empty_like(t) for t in picked)
        first[order], second[order], clashed[order] = picked
        return DuelChoice(first, second, clashed), order.tolist()

    def erm_labelled(self, sel: Selection, rows: list[int], wanted: int) -> tuple[Preferences, list[int]]:
        """B_ERM from the prompts `rows`, at most `wanted` pairs: never shown to the oracle, never
        added to the ERM's own data. The paper's rule (§4.3): one pair per prompt, a sampled head's
        best vs worst candidate (a head indifferent between all candidates gives none). With
        `erm_gate`, only pairs that share of the heads agree on (`gated_erm_pairs`), several per
        prompt, never the oracle's own duel. With `erm_soft_labels`, each pair carries the
        ensemble's P(chosen > rejected) for the learner. Returns the pairs and the prompt of each."""
        sub, mask = sel.rewards[:, rows], sel.mask[rows]
        if self.erm.cfg.erm_gate is None:
            pairs = erm_labelled_pairs(sub, self.generator, mask)
            keep = [i for i, tied in enumerate(pairs.clashed.tolist()) if not tied][:wanted]
            at, chosen, rejected = torch.tensor(keep, dtype=torch.long), pairs.first[keep], pairs.second[keep]
        else:
            at, chosen, rejected = gated_erm_pairs(sub, self.erm.cfg.erm_gate, mask)
            index = torch.tensor(rows)[at]
            first, second = sel.choice.first[index], sel.choice.second[index]
            fresh = ~(((chosen == first) & (rejected == second)) | ((chosen == second) & (rejected == first)))
            at, chosen, rejected = at[fresh][:wanted], chosen[fresh][:wanted], rejected[fresh][:wanted]
        prompts = [rows[i] for i in at.tolist()]
        soft = ensemble_preference(sub, at, chosen, rejected).tolist() if self.erm.cfg.erm_soft_labels else None
        return (
            Preferences(
                prompts=[sel.candidates.prompts[r] for r in prompts],
                chosen=[sel.candidates.responses[r][c] for r, c in zip(prompts, chosen.tolist())],
                rejected=[sel.candidates.responses[r][c] for r, c in zip(prompts, rejected.tolist())],
                confidence=soft,
            ),
            prompts,
        )

    def anchored_pairs(
        self, sel: Selection, rows: list[int], first_wins: Tensor, wanted: int, own_pair: bool = False, per_duel: int = 1
    ) -> tuple[Preferences, list[bool]]:
        """B_ERM anchored on the oracle (beyond the paper): for the duels of prompts `rows`, labelled
        `first_wins`, the oracle's winner against each of the `per_duel` ensemble-mean worst
        candidates of the same prompt other than the duel's two, worst first; at most `wanted`, in
        order. Where no third distinct candidate exists: none, or with `own_pair` the duel itself
        (winner against loser). Why: a DAP step learns most from the best candidate against a
        clearly worse one (benchmarks/sea_oracle_erm.py --noise 0); the oracle finds the better of
        the ERM's top two, and the ERM is surest about which candidates are worst. Returns the
        pairs and, for each, whether the ERM chose its rejected response (False: the duel itself,
        the oracle's own label, which the ERM's label accuracy must not count)."""
        idx = torch.tensor(rows, dtype=torch.long)
        first, second = sel.choice.first[idx], sel.choice.second[idx]
        winner, loser = torch.where(first_wins, first, second).tolist(), torch.where(first_wins, second, first).tolist()
        others = sel.mask[idx].clone()
        at = torch.arange(len(rows))
        others[at, first], others[at, second] = False, False
        mean = sel.rewards[:, idx].mean(0).masked_fill(~others, float("inf"))  # (n, M)
        worst = mean.argsort(dim=1, stable=True)[:, :per_duel]  # (n, N): ties go to the earlier candidate
        real = torch.gather(others, 1, worst)
        picked = []  # (prompt, chosen, rejected) candidate indices, and whether the ERM chose it
        for i, r in enumerate(rows):
            against = worst[i][real[i]].tolist()
            picked += [(r, winner[i], c, True) for c in against] or ([(r, winner[i], loser[i], False)] if own_pair else [])
        picked = picked[:wanted]
        pairs = Preferences(
            prompts=[sel.candidates.prompts[r] for r, _, _, _ in picked],
            chosen=[sel.candidates.responses[r][c] for r, c, _, _ in picked],
            rejected=[sel.candidates.responses[r][c] for r, _, c, _ in picked],
        )
        return pairs, [by_erm for *_, by_erm in picked]

    # -- learning -------------------------------------------------------------------------------

    def observe(self, sel: Selection, rows: list[int], first_wins: Tensor) -> dict[str, float]:
        """Add the oracle's labels for prompts `rows` to the ERM's data; returns diagnostics measured
        *before* training on them: the ERM's accuracy and the ensemble's disagreement (variance
        of the logit difference) on the selected pairs and on random pairs of the same prompts."""
        if self.erm is None or not rows:
            return {}
        idx = torch.tensor(rows)
        first, second = sel.choice.first[idx], sel.choice.second[idx]
        f_first, f_second = sel.features[idx, first], sel.features[idx, second]  # (n, d)
        r_first, r_second = sel.rewards[:, idx, first], sel.rewards[:, idx, second]  # (K, n)
        predicted = r_first.mean(0) > r_second.mean(0)
        z = first_wins[:, None]
        self.erm.add(torch.where(z, f_first, f_second), torch.where(z, f_second, f_first))
        m = sel.rewards.shape[2]
        a, b = torch.randint(m, (2, len(rows)), generator=self.generator)
        return {
            "erm_accuracy": (predicted == first_wins).double().mean().item(),
            "disagreement_selected": (r_first - r_second).var(0, unbiased=False).mean().item(),
            "disagreement_random": (sel.rewards[:, idx, a] - sel.rewards[:, idx, b]).var(0, unbiased=False).mean().item(),
        }

    def train_round(self) -> dict[str, float]:
        return {} if self.erm is None else {"erm_loss": self.erm.train_round(), "erm_labels": len(self.erm)}

    def mean_reward(self, prompts: Sequence[str], responses: Sequence[str]) -> Tensor:
        """The ensemble-mean reward, the scorer of best-of-N inference; shape (B,)."""
        return self.erm.rewards(self.features(prompts, responses)).mean(0)

    # -- checkpoint -----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "erm": None if self.erm is None else self.erm.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        if self.erm is not None:
            self.erm.load_state_dict(state["erm"])
