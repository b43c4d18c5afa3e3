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
    ):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.num_candidates = num_candidates
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.version = 0  # learner steps reflected in these weights

    def propose(self, prompts: Sequence[str]) -> Candidates:
        responses = generate(
            self.model,
            self.tokenizer,
            prompts,
            num_samples=self.num_candidates,
            temperature=self.temperature,
            max_new_tokens=self.max_new_tokens,
        )
        return Candidates(prompts=list(prompts), responses=responses)

    @torch.no_grad()
    def sync(self, learner_model: PreTrainedModel, version: int) -> None:
        """Weights flow learner -> actor (the broadcast after an update in Fig. 4)."""
        self.model.load_state_dict(learner_model.state_dict())
        self.version = version
