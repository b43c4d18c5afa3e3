"""Named agents: short recipes composed from the shared pieces (paper Table 1 and §5.2 baselines).

A recipe says how duels are selected and when labels are collected relative to learning; the
loop in `sealign.loop` runs every recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from sealign import explore

SelectionRule = Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Agent:
    name: str
    select: SelectionRule
    online: bool  # False: the whole budget is labelled from pi_ref before learning, the actor never syncs
    summary: str


AGENTS: dict[str, Agent] = {
    "online": Agent("online", explore.passive, True, "online DAP with passive exploration (Guo et al. 2024; Table 1 variant 1)"),
    "offline": Agent("offline", explore.passive, False, "offline DAP: the budget labelled from pi_ref up front, then trained"),
}
