"""The Actor role (paper §5.1, Fig. 4): proposes candidate responses with its copy of pi_theta."""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from sealign.policy import generate
from sealign.records import Candidates


class Actor:
    """Samples M candidates per prompt. Its weights follow the learner's only when `sync` is called,
    so `sync_every > 1` gives iterative DAP and never syncing gives the offline agent."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        num_candidates: int,
        temperature: float,
        max_new_tokens: int,
        reference: PreTrainedModel | None = None,
    ):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.reference = reference  # XPO: the last candidate of every prompt comes from pi_ref
        self.tokenizer = tokenizer
        self.num_candidates = num_candidates
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.version = 0  # learner steps reflected in these weights

    def propose(self, prompts: Sequence[str]) -> Candidates:
        """M responses per prompt from pi_theta (the last one from pi_ref when a reference is set)."""
        own = self.num_candidates - (self.reference is not None)
        responses = self._sample(self.model, prompts, own)
        if self.reference is not None:
            responses = [row + extra for row, extra in zip(responses, self._sample(self.reference, prompts, 1))]
        return Candidates(prompts=list(prompts), responses=responses)

    def _sample(self, model: PreTrainedModel, prompts: Sequence[str], n: int) -> list[list[str]]:
        return generate(
            model, self.tokenizer, prompts, num_samples=n, temperature=self.temperature, max_new_tokens=self.max_new_tokens
        )

    @torch.no_grad()
    def sync(self, learner_model: PreTrainedModel, version: int) -> None:
        """Weights flow learner -> actor (the broadcast after an update in Fig. 4)."""
        self.model.load_state_dict(learner_model.state_dict())
        self.version = version
