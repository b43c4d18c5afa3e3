"""The LLM judge against a local stand-in of the chat-completions API: log-probs, plain text,
garbage, 429, 5xx and a timeout; and a whole run judged by it."""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from sealign.cli import main
from sealign.config import OracleConfig
from sealign.errors import SealignError
from sealign.oracles import make_oracle
from sealign.oracles.judge import parse_answer

KEY = "sk-test-secret-key"
SHOWN = re.compile(r"\[Prompt\]\n(.*)\n\n\[Response 1\]\n(.*)\n\n\[Response 2\]\n(.*)\n\nWhich", re.S)


def undecided(a: str, b: str) -> bool:
    return a == b or (len(a) + len(b)) % 3 == 0


class StandIn(BaseHTTPRequestHandler):
    """Prefers the response that sorts first (p = 0.8); a garbage answer when the two lengths in
    characters add up to a multiple of 3 (a third of the pairs), or the texts are equal. A
    prompt containing MODE:text answers in text only, MODE:garbage never names a response,
    MODE:429 / MODE:503 / MODE:timeout fail the first time a body is seen, MODE:retryafter answers
    it with 429 and Retry-After: 1.5."""

    seen: Counter = Counter()
    shown_first: list = []

    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, code: int, body: dict, **headers: str) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            return self._send(401, {"error": "bad key"})
        body = json.loads(raw)
        assert self.path == "/v1/chat/completions" and body["logprobs"] is True
        prompt, first, second = SHOWN.search(body["messages"][0]["content"]).groups()
        mode = re.search(r"MODE:(\w+)", prompt)
        mode = mode.group(1) if mode else "logprobs"
        StandIn.seen[raw] += 1
        StandIn.shown_first.append(first)
        if mode == "retryafter" and StandIn.seen[raw] == 1:
            StandIn.refused_at = time.monotonic()
            return self._send(429, {"error": "slow down"}, Retry_After="1.5")
        if mode in ("429", "503", "timeout") and StandIn.seen[raw] == 1:
            if mode == "timeout":
                time.sleep(1.0)
            return self._send(200 if mode == "timeout" else int(mode), {"error": "try again"})
        if mode == "garbage" or undecided(first, second):
            return self._send(200, {"choices": [{"message": {"content": "I cannot decide."}}]})
        better = "1" if first < second else "2"
        if mode == "text":
            return self._send(200, {"choices": [{"message": {"content": f"Response {better}."}}]})
        top = [{"token": better, "logprob": math.log(0.8)}, {"token": " " + ("2" if better == "1" else "1"), "logprob": math.log(0.2)}]
        return self._send(200, {"choices": [{"message": {"content": better}, "logprobs": {"content": [{"token": better, "top_logprobs": top}]}}]})


@pytest.fixture
def stand_in(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    StandIn.seen, StandIn.shown_first = Counter(), []
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def judge(url: str, **kw) -> object:
    return make_oracle(OracleConfig(**{"oracle": "judge:stand-in", "judge_base_url": url, "oracle_timeout": 0.3, **kw}))


def test_parse_answer_by_hand():
    """log-probs 0.6 / 0.2 on "1" / " 2" give 0.75; text names one choice or nothing."""
    lp = {"content": [{"token": "1", "top_logprobs": [{"token": "1", "logprob": math.log(0.6)}, {"token": " 2", "logprob": math.log(0.2)}, {"token": "x", "logprob": -1}]}]}
    assert parse_answer({"choices": [{"message": {"content": "1"}, "logprobs": lp}]}) == pytest.approx(0.75)
    assert parse_answer({"choices": [{"message": {"content": "Response 2."}}]}) == 0.0
    assert parse_answer({"choices": [{"message": {"content": " 1 "}}]}) == 1.0
    assert parse_answer({"choices": [{"message": {"content": "1 or 2"}}]}) is None
    assert parse_answer({"choices": []}) is None and parse_answer({"oops": 1}) is None


def test_judge_modes_against_the_stand_in(stand_in):
    oracle = judge(stand_in, judge_parse_retries=2)
    better, worse = "apple", "river"  # 5 + 5 characters: decided
    probs = oracle.compare([f"post{i} TL;DR:" for i in range(16)], [better] * 16, [worse] * 16)
    assert torch.allclose(probs, torch.full((16,), 0.8, dtype=torch.float64))  # de-swapped: a is always better
    assert {better, worse} <= set(StandIn.shown_first)  # both positions were used
    modes = ["text", "garbage", "429", "503", "timeout"]
    StandIn.seen.clear()
    probs = oracle.compare([f"MODE:{m} TL;DR:" for m in modes], [worse] * 5, [better] * 5)
    assert probs[0] == 0.0 and math.isnan(probs[1]) and torch.allclose(probs[2:], torch.full((3,), 0.2, dtype=torch.float64))
    assert sorted(StandIn.seen.values()) == [1, 2, 2, 2, 3]  # text once, each failure retried once, garbage 1 + 2 retries
    assert oracle.unparsed == 1
    labels = oracle.label(["MODE:garbage TL;DR:", "x TL;DR:"], [better, better], [worse, worse])
    assert labels.answered.tolist() == [False, True] and labels.first_wins.tolist() == [True]  # nothing invented


def test_judge_without_the_key_fails_in_one_line(stand_in, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(SealignError, match="401") as e:
        judge(stand_in).compare(["x TL;DR:"], ["a b"], ["a"])
    assert KEY not in str(e.value)


def test_a_run_judged_by_the_stand_in(tmp_path, tiny_models, prompts_jsonl, stand_in):
    out = tmp_path / "run"
    code = main(
        ["train", "--policy", tiny_models["gpt2"], "--oracle", "judge:stand-in", "--judge-base-url", stand_in,
         "--judge-parse-retries", "0", "--data", prompts_jsonl, "--budget", "8", "--batch-size", "4", "--eval-every", "8",
         "--eval-size", "6", "--max-new-tokens", "4", "--quiet", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    rows = [json.loads(line) for line in (out / "queries.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(8))
    # undecided pairs are never labelled; every label is the stand-in's own preference
    assert all(not undecided(r["first"], r["second"]) and (r["first"] < r["second"]) == r["first_wins"] for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["queries"] == 8 and summary["unanswered"] > 0  # asked, not labelled, not charged
    for name in ("config.json", "summary.json", "metrics.jsonl", "queries.jsonl"):
        assert KEY not in (out / name).read_text()


def test_a_429_with_retry_after_is_honoured(stand_in):
    oracle = judge(stand_in, oracle_timeout=5.0)
    probs = oracle.compare(["MODE:retryafter TL;DR:"], ["apple"], ["river"])
    waited = time.monotonic() - StandIn.refused_at
    assert probs.tolist() == [0.8] and sorted(StandIn.seen.values()) == [2]  # refused once, answered on the retry
    assert waited >= 1.4  # the SDK waited as long as the server asked (its own backoff starts at 0.5 s)
