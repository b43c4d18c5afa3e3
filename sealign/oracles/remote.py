"""The client of `sealign serve-oracle`: an oracle whose answers come over HTTP.

Every request carries a fresh id and is retried with that id (timeouts, refused connections,
429, 5xx; exponential backoff), so a lost answer or a restarted server costs time, never a
label: the labels are drawn here, from the returned probabilities, with noise keyed by label
index (`PairwiseOracle`), and only once an answer has arrived.
"""

from __future__ import annotations

import os
import uuid
from typing import Sequence

import torch

from sealign.config import OracleConfig
from sealign.errors import SealignError
from sealign.oracles.base import PairwiseOracle
from sealign.oracles.http import post_json


class RemoteOracle(PairwiseOracle):
    def __init__(self, cfg: OracleConfig):
        super().__init__(cfg)
        self.url = cfg.target
        token = os.environ.get(cfg.oracle_token_env)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        health = self._call("/health", None)
        if health.get("status") != "ok":
            raise SealignError(f"oracle server {self.url} is not healthy: {health}")
        self.scores = bool(health.get("scores"))
        self.served = health.get("oracle")

    def _call(self, route: str, body: dict | None) -> dict:
        c = self.cfg
        return post_json(
            self.url + route, body, headers=self.headers, timeout=c.oracle_timeout, retries=c.oracle_retries, backoff=c.oracle_backoff
        )

    def _probs(self, prompts: list[str], responses_a: list[str], responses_b: list[str]) -> torch.Tensor:
        answer = self._call("/compare", {"id": uuid.uuid4().hex, "prompts": prompts, "first": responses_a, "second": responses_b})
        return torch.tensor([float("nan") if p is None else p for p in answer["probs"]], dtype=torch.float64)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """r(x, y) per response from a served reward oracle, shape (B,)."""
        if not self.scores:
            raise SealignError(f"the oracle served at {self.url} ({self.served}) gives no scalar reward")
        answer = self._call("/score", {"id": uuid.uuid4().hex, "prompts": list(prompts), "responses": list(responses)})
        return torch.tensor(answer["scores"], dtype=torch.float64)
