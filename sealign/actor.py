"""The Actor role (paper §5.1, Fig. 4): proposes candidate responses with its copy of pi_theta.

A batch of prompts is split into `--actors` contiguous shards, and each shard is sampled under
its own seed, a pure function of (run seed, the batch's place in the prompt stream, shard).
So the candidates do not depend on where the shards run: `LocalActors` answers them one after
another in this process, `sealign.distributed.RayActors` on Ray actors in parallel, and both
give the same candidates, before and after a resume.
"""

from __future__ import annotations

import copy
from typing import Protocol, Sequence

import numpy as np
import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from sealign.policy import generate
from sealign.records import Candidates


GENERATION_PROMPTS = 256  # prompts sampled at once unless --generation-batch-size bounds the rows


def sampling_seed(run_seed: int, position: int, shard: int) -> int:
    """The torch seed that samples shard `shard` of the batch that starts at prompt `position`."""
    return int(np.random.default_rng([run_seed, position, shard]).integers(2**62))


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) slices of n prompts over `shards` actors, sizes differing by at most one
    (an actor with nothing to do gets no slice)."""
    edges = np.linspace(0, n, min(shards, n) + 1).round().astype(int).tolist()
    return list(zip(edges[:-1], edges[1:]))


def join(parts: Sequence[Candidates]) -> Candidates:
    """The candidates of a batch from its shards, in shard order."""
    return Candidates(
        prompts=[x for c in parts for x in c.prompts],
        responses=[r for c in parts for r in c.responses],
        version=min(c.version for c in parts),
    )


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
        generation_batch_size: int | None = None,
    ):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.generation_batch_size = generation_batch_size  # rows sampled at once; None: 256 prompts
        self.reference = reference  # XPO: the last candidate of every prompt comes from pi_ref
        self.tokenizer = tokenizer
        self.num_candidates = num_candidates
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.version = 0  # learner steps reflected in these weights

    def propose(self, prompts: Sequence[str], seed: int) -> Candidates:
        """M responses per prompt from pi_theta (the last one from pi_ref when a reference is set),
        sampled under `seed` without disturbing the caller's random state."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            own = self.num_candidates - (self.reference is not None)
            responses = self._sample(self.model, prompts, own)
            if self.reference is not None:
                responses = [row + extra for row, extra in zip(responses, self._sample(self.reference, prompts, 1))]
        return Candidates(prompts=list(prompts), responses=responses, version=self.version)

    def _sample(self, model: PreTrainedModel, prompts: Sequence[str], n: int) -> list[list[str]]:
        rows = self.generation_batch_size
        return generate(
            model, self.tokenizer, prompts, num_samples=n, temperature=self.temperature, max_new_tokens=self.max_new_tokens,
            batch_size=GENERATION_PROMPTS if rows is None else max(1, rows // n),
        )  # fmt: skip

    @torch.no_grad()
    def sync(self, learner_model: PreTrainedModel, version: int) -> None:
        """Weights flow learner -> actor (the broadcast after an update in Fig. 4)."""
        self.model.load_state_dict(learner_model.state_dict())
        self.version = version


class Pending(Protocol):
    """Candidates on their way: generation may still be running elsewhere."""

    def result(self) -> Candidates: ...


class Ready:
    """Candidates already sampled (the local backend answers at once)."""

    def __init__(self, candidates: Candidates):
        self.candidates = candidates

    def result(self) -> Candidates:
        return self.candidates


class LocalActors:
    """The local backend: `shards` logical actors answered in turn by one `Actor` in this process.

    `submit` samples at once, with the weights of that moment, so an asynchronous schedule that
    submits a batch before the learner's step (see `sealign.loop`) reproduces a Ray run exactly.
    """

    restarts = 0  # nothing here can die on its own

    def __init__(self, actor: Actor, shards: int, run_seed: int):
        self.actor, self.shards, self.run_seed = actor, shards, run_seed

    def submit(self, prompts: Sequence[str], position: int) -> Pending:
        parts = [
            self.actor.propose(prompts[a:b], sampling_seed(self.run_seed, position, k))
            for k, (a, b) in enumerate(shard_bounds(len(prompts), self.shards))
        ]
        return Ready(join(parts))

    def sync(self, learner_model: PreTrainedModel, version: int) -> None:
        self.actor.sync(learner_model, version)

    def close(self) -> None:
        pass
