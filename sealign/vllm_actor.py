"""The Actor with vLLM as its sampler (`--actor vllm`), as in the paper's system (§5.1).

transformers' generate keeps one key/value cache row per sequence, so the M candidates of a
prompt hold M copies of its cache. vLLM's paged attention lets the `n = M` samples of one
request share the prompt's blocks. The engine runs in this process (the learner's weights are
pushed into it by reference, not through a pipe) and takes `--actor-memory` of the GPU for its
weights and cache, leaving the rest to the learner.

The transformers copy of the Actor stays the record of its weights (checkpoints while it lags,
APL's log-probs) and samples XPO's pi_ref candidate; vLLM samples every pi_theta candidate.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
from transformers import PreTrainedModel

from sealign.actor import Actor
from sealign.policy import prompt_inputs


class VLLMSampler:
    """One vLLM engine over the policy's weights: samples, and takes new weights."""

    def __init__(self, source: str, tokenizer, *, dtype: str, memory: float, max_len: int, seed: int):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process
        from vllm import LLM

        self.tokenizer = tokenizer
        # we tokenize and detokenize with the policy's own tokenizer, as the transformers path does
        self.llm = LLM(
            model=source, skip_tokenizer_init=True, dtype=dtype, gpu_memory_utilization=memory,
            max_model_len=max_len, seed=seed, enable_prefix_caching=True,
        )  # fmt: skip

    def sample(self, prompts: Sequence[str], n: int, *, temperature: float, max_new_tokens: int, seeds: Sequence[int]) -> list[list[str]]:
        """`n` responses per prompt, pure temperature sampling (no top-k / top-p, as
        `sealign.policy.generate`), request i seeded by `seeds[i]`; returns texts, (P, n)."""
        from vllm import SamplingParams

        texts, special = prompt_inputs(self.tokenizer, prompts)
        ids = self.tokenizer(texts, add_special_tokens=special)["input_ids"]
        params = [
            SamplingParams(
                n=n, temperature=temperature, top_k=0, top_p=1.0, max_tokens=max_new_tokens, seed=int(seed),
                stop_token_ids=[self.tokenizer.eos_token_id], detokenize=False,
            )  # fmt: skip
            for seed in seeds
        ]
        outputs = self.llm.generate([{"prompt_token_ids": row} for row in ids], params, use_tqdm=False)
        return [[self.tokenizer.decode(o.token_ids, skip_special_tokens=True) for o in out.outputs] for out in outputs]

    @torch.no_grad()
    def load(self, model: PreTrainedModel) -> None:
        """The engine's weights <- `model`'s (transformers names; vLLM maps them), and the prefix
        cache, computed with the old weights, dropped."""
        weights = [(name, tensor.detach()) for name, tensor in model.state_dict().items()]
        self.llm.apply_model(lambda engine_model: engine_model.load_weights(weights))
        self.llm.reset_prefix_cache()


class VLLMActor(Actor):
    """An Actor whose pi_theta candidates come from a `VLLMSampler`, which follows every sync."""

    def __init__(self, model: PreTrainedModel, tokenizer, sampler: VLLMSampler, **kwargs):
        super().__init__(model, tokenizer, **kwargs)
        self.sampler = sampler

    def _sample(self, model: PreTrainedModel, prompts: Sequence[str], n: int) -> list[list[str]]:
        if model is not self.model:  # XPO's pi_ref candidate
            return super()._sample(model, prompts, n)
        seeds = torch.randint(2**62, (len(prompts),)).tolist()  # from the seed propose() set
        return self.sampler.sample(prompts, n, temperature=self.temperature, max_new_tokens=self.max_new_tokens, seeds=seeds)

    def sync(self, learner_model: PreTrainedModel, version: int) -> None:
        super().sync(learner_model, version)
        self.sampler.load(self.model)
