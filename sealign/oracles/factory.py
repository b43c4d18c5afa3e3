"""One place that turns an --oracle spec into an oracle object."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sealign.config import OracleConfig

if TYPE_CHECKING:
    from sealign.oracles.base import Oracle
    from sealign.tasks.keywords import KeywordsTask


def make_oracle(cfg: OracleConfig, task: KeywordsTask | None = None) -> Oracle:
    """The oracle `cfg.oracle` names; `task` supplies the hidden reward of the `task` oracle."""
    if cfg.kind == "task":
        from sealign.oracles.base import RewardOracle

        if task is None:
            raise ValueError("the task oracle needs the task")
        return RewardOracle(task.reward, cfg)
    if cfg.kind == "rm":
        from sealign.oracles.reward_model import reward_model_oracle

        return reward_model_oracle(cfg.target, cfg)
    if cfg.kind == "human":
        from sealign.oracles.human import HumanOracle

        return HumanOracle(cfg)
    if cfg.kind == "judge":
        from sealign.oracles.judge import JudgeOracle

        return JudgeOracle(cfg)
    from sealign.oracles.remote import RemoteOracle

    return RemoteOracle(cfg)
