"""An LLM judge as the preference oracle: an OpenAI-compatible chat-completions endpoint is
shown the prompt and both responses and names the better one (the paper's GPT-4o-mini judge,
§6.4).

- The two responses are shown in a random order per comparison (keyed by comparison index
  and `oracle_seed`), which cancels the judge's position bias on average.
- P(a > b) comes from the log-probabilities of the two choice tokens in the judge's first
  answer token when the endpoint returns them, else from the answer text (then 0 or 1).
- An answer that names neither response is asked again `judge_parse_retries` times, then
  counted in `unparsed` and returned as NaN: that pair gets no label (never an invented one).
- Requests go through the `openai` SDK, which retries timeouts, 408, 409, 429 and 5xx with
  its own backoff (`--oracle-retries` times, each try `--oracle-timeout` seconds) and waits
  as long as a 429's Retry-After asks; at most `judge_concurrency` requests are in flight.
- The API key is read from the environment variable `judge_key_env`; it is only ever put in
  the request's Authorization header: never logged, never written to the run folder.
"""

from __future__ import annotations

import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from sealign.config import OracleConfig
from sealign.data import prompt_text
from sealign.errors import SealignError
from sealign.oracles.base import PairwiseOracle

CHOICES = ("1", "2")
DEFAULT_TEMPLATE = """You are comparing two responses to the same prompt. Decide which response is better: more \
helpful, accurate, and to the point.

[Prompt]
{prompt}

[Response 1]
{first}

[Response 2]
{second}

Which response is better? Answer with a single character: 1 or 2."""
_TEXT_ANSWER = re.compile(r"\W*(?:response\s*)?([12])\W*", re.IGNORECASE)


def parse_answer(answer: dict) -> Optional[float]:
    """P(the response shown first is better) from a chat-completions answer, or None.

    Log-probs: P = p("1") / (p("1") + p("2")) over the first answer token's top log-probs
    (tokens compared after stripping spaces). Otherwise the text must name exactly one choice
    ("1", "Response 2.", ...), giving 1 or 0."""
    try:
        choice = answer["choices"][0]
        content = (choice.get("logprobs") or {}).get("content") or []
        if content:
            top = content[0].get("top_logprobs") or []
            mass = {c: sum(math.exp(t["logprob"]) for t in top if str(t["token"]).strip() == c) for c in CHOICES}
            if mass["1"] + mass["2"] > 0:
                return mass["1"] / (mass["1"] + mass["2"])
        match = _TEXT_ANSWER.fullmatch(((choice.get("message") or {}).get("content") or "").strip())
    except (KeyError, IndexError, TypeError, AttributeError, ValueError):
        return None  # not the shape of a chat completion: garbage
    return None if match is None else float(match.group(1) == "1")


def shown_swapped(seed: int, start: int, n: int) -> list[bool]:
    """Per comparison start .. start + n - 1: whether b is shown first; a pure function of (seed, index)."""
    return [bool(np.random.default_rng([seed, 7, start + i]).random() < 0.5) for i in range(n)]


class JudgeOracle(PairwiseOracle):
    def __init__(self, cfg: OracleConfig):
        from openai import OpenAI

        super().__init__(cfg)
        self.model = cfg.target
        # a local server may want no key; the SDK insists on one, so an unused placeholder is sent
        key = os.environ.get(cfg.judge_key_env) or "no-key"
        self.client = OpenAI(base_url=cfg.judge_base_url, api_key=key, timeout=cfg.oracle_timeout, max_retries=cfg.oracle_retries)
        self.template = Path(cfg.judge_template).read_text(encoding="utf-8") if cfg.judge_template else DEFAULT_TEMPLATE
        try:
            self.template.format(prompt="", first="", second="")
        except (KeyError, IndexError, ValueError) as e:
            raise SealignError(f"--judge-template: only {{prompt}}, {{first}} and {{second}} may be filled in ({e})") from None
        self.unparsed = 0  # pairs left without a label after every retry
        self.pool = ThreadPoolExecutor(max_workers=cfg.judge_concurrency)

    def _ask(self, prompt: str, first: str, second: str) -> float:
        """P(first > second) from the judge, NaN if it never names one."""
        import openai

        messages = [{"role": "user", "content": self.template.format(prompt=prompt_text(prompt), first=first, second=second)}]
        for _ in range(self.cfg.judge_parse_retries + 1):
            try:
                answer = self.client.chat.completions.create(
                    model=self.model, messages=messages, temperature=0, max_tokens=4, logprobs=True, top_logprobs=5
                )
            except openai.APIStatusError as e:  # the SDK's text never holds the key
                raise SealignError(f"judge {self.model} at {self.cfg.judge_base_url}: HTTP {e.status_code}: {str(e.message)[:200]}") from None
            except openai.APIConnectionError as e:
                raise SealignError(
                    f"judge {self.model} at {self.cfg.judge_base_url}: no answer after {self.cfg.oracle_retries + 1} tries ({type(e).__name__})"
                ) from None
            p = parse_answer(answer.model_dump())
            if p is not None:
                return p
        return float("nan")

    def _probs(self, prompts: list[str], responses_a: list[str], responses_b: list[str]) -> torch.Tensor:
        swapped = shown_swapped(self.cfg.oracle_seed, self.calls - len(prompts), len(prompts))
        shown = [(x, b, a) if s else (x, a, b) for x, a, b, s in zip(prompts, responses_a, responses_b, swapped)]
        first_better = list(self.pool.map(lambda job: self._ask(*job), shown))
        probs = torch.tensor([1 - p if s else p for p, s in zip(first_better, swapped)], dtype=torch.float64)
        self.unparsed += int(torch.isnan(probs).sum())
        return probs
