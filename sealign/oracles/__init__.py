"""Preference oracles: who answers "which response is better?" (paper §2.1, §5.2)."""

from sealign.oracles.base import (
    Labels,
    Oracle,
    PairwiseOracle,
    RewardOracle,
    bradley_terry,
    feedback_uniforms,
    labels_from_probs,
)
from sealign.oracles.factory import make_oracle

__all__ = [
    "Labels",
    "Oracle",
    "PairwiseOracle",
    "RewardOracle",
    "bradley_terry",
    "feedback_uniforms",
    "labels_from_probs",
    "make_oracle",
]
