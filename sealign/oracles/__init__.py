"""Preference oracles: who answers "which response is better?" (paper §2.1, §5.2)."""

from sealign.oracles.base import Oracle, RewardOracle, bradley_terry, feedback_uniforms, labels_from_probs

__all__ = ["Oracle", "RewardOracle", "bradley_terry", "feedback_uniforms", "labels_from_probs"]
