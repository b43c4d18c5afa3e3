"""A reward-model oracle: any scalar `AutoModelForSequenceClassification` (the paper's Skywork-Reward).

The reward model reads (prompt, response) through *its own* tokenizer — and its chat template
when it has one, as reward models trained on chat data expect — never through the policy's.
Its scalar outputs become preferences by Bradley–Terry (`RewardOracle`, Eq. 3).
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from sealign.config import OracleConfig
from sealign.data import messages_of, prompt_text
from sealign.errors import SealignError
from sealign.oracles.base import RewardOracle


class RewardModel:
    """Scores r(x, y) in batches of `batch_size`, on the configured device and dtype."""

    def __init__(self, name: str, cfg: OracleConfig):
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name)
            self.model = AutoModelForSequenceClassification.from_pretrained(name, dtype=getattr(torch, cfg.oracle_dtype))
        except (OSError, ValueError) as e:
            raise SealignError(f"cannot load reward model {name!r}: {str(e).splitlines()[0]}") from None
        if self.model.config.num_labels != 1:
            raise SealignError(f"reward model {name!r} has {self.model.config.num_labels} outputs; a scalar reward model has 1")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        if self.model.config.pad_token_id is None:  # needed to find each row's last token in a padded batch
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(cfg.oracle_device).eval().requires_grad_(False)
        self.chat = cfg.rm_chat_template and bool(getattr(self.tokenizer, "chat_template", None))
        self.batch_size = cfg.oracle_batch_size

    def _encode(self, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, torch.Tensor]:
        if self.chat:
            texts = [
                self.tokenizer.apply_chat_template(
                    [*(messages_of(x) or [{"role": "user", "content": x}]), {"role": "assistant", "content": y}], tokenize=False
                )
                for x, y in zip(prompts, responses)
            ]
            return self.tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
        # without a template, prompt and response are a text pair: each tokenized on its own, so
        # no word is glued across the boundary, joined by the tokenizer's own pair rule
        return self.tokenizer([prompt_text(x) for x in prompts], list(responses), padding=True, return_tensors="pt")

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        out: list[float] = []
        for start in range(0, len(prompts), self.batch_size):
            stop = start + self.batch_size
            batch = self._encode(prompts[start:stop], responses[start:stop]).to(self.model.device)
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (b, 1)
            out.extend(logits[:, 0].float().tolist())
        return out


def reward_model_oracle(name: str, cfg: OracleConfig) -> RewardOracle:
    return RewardOracle(RewardModel(name, cfg), cfg)
