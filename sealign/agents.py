"""Named agents: short recipes composed from the shared pieces (paper Table 1 and §5.2 baselines).

A recipe says how duels are selected, what learns from the labels (the policy, the epistemic
reward model R, or both, with or without self-alignment π ↔ R), when labels are collected
relative to learning, and how the agent answers at test time (its policy, or best-of-N under R).
The loop in `sealign.loop` runs every recipe.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Agent:
    name: str
    explore: str  # default duel selection rule (a key of sealign.explore.RULES)
    summary: str
    online: bool = True  # False: the whole budget is labelled from pi_ref first, the actor never syncs
    learn_policy: bool = True  # False: the policy stays pi_ref (variant 7)
    learn_erm: bool = False  # an epistemic reward model learns from the oracle's labels
    self_align: bool = False  # policy batches mix in ERM-labelled pairs (π ↔ R, §4.3)
    best_of_n: bool = False  # inference is BoN(π, R) instead of the policy's greedy answer
    dpo_only: bool = False  # built on DPO's implicit reward or objective (APL, XPO)
    reference_duel: bool = False  # every duel pits pi_theta against a pi_ref response, and the learner adds optimism on it (XPO)
    ranks_pool: bool = False  # the actor answers a pool larger than the batch, ranked by the policy itself (APL)
    candidates: int = 2  # M when the agent has no reward model to choose among more

    @property
    def default_candidates(self) -> int:
        """M by default: 20 with a reward model (§5.2), else the agent's own."""
        return 20 if self.learn_erm else self.candidates


AGENTS: dict[str, Agent] = {
    a.name: a
    for a in [
        Agent("online", "passive", "1: online DAP with passive exploration (Guo et al. 2024)"),
        Agent("offline", "passive", "offline DAP: the budget labelled from pi_ref up front, then trained", online=False),
        Agent("sea-noalign", "bai_ts", "2: active exploration with the ERM, policy and ERM learn apart", learn_erm=True),
        Agent("sea", "bai_ts", "3: SEA, active exploration and policy <-> ERM self-alignment", learn_erm=True, self_align=True),
        Agent("bon-passive", "passive", "4: passive exploration, policy and ERM learn apart, BoN inference", learn_erm=True, best_of_n=True),
        Agent("bon-active", "bai_ts", "5: active exploration, policy and ERM learn apart, BoN inference", learn_erm=True, best_of_n=True),
        Agent(
            "sea-bon", "bai_ts", "6: SEA with best-of-N inference", learn_erm=True, self_align=True, best_of_n=True
        ),
        Agent(
            "erm-bon",
            "bai_ts",
            "7: pi_ref fixed, only the ERM learns, BoN inference (Dwaracherla et al. 2024)",
            learn_policy=False,
            learn_erm=True,
            best_of_n=True,
        ),
        Agent(
            "apl",
            "apl",
            "active preference learning: high-entropy prompts, largest implicit-reward gap (Muldrew et al. 2024)",
            dpo_only=True,
            ranks_pool=True,
            candidates=4,
        ),
        Agent(
            "xpo",
            "xpo",
            "exploratory preference optimisation: pi_theta vs pi_ref duels, optimism term (Xie et al. 2024)",
            dpo_only=True,
            reference_duel=True,
        ),
    ]
}
