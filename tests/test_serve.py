"""serve-oracle: dynamic batching, request ids, bearer token, and a server killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from sealign.cli import main
from sealign.config import OracleConfig
from sealign.oracles import make_oracle
from sealign.oracles.http import HTTPFailure, post_json
from sealign.oracles.serve import launch

TOKEN = "test-token-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health(url: str) -> dict:
    with urllib.request.urlopen(url + "/health", timeout=5) as r:
        return json.loads(r.read())


def start_server(rm: str, port: int, *extra: str) -> subprocess.Popen:
    return launch(f"rm:{rm}", port, *extra, env={**os.environ, "SEALIGN_ORACLE_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"})


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.fixture
def client_env(monkeypatch):
    monkeypatch.setenv("SEALIGN_ORACLE_TOKEN", TOKEN)


def test_concurrent_requests_are_batched_and_repeats_not_rescored(tiny_models, task, client_env):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(tiny_models["rm"], port, "--max-batch", "8", "--max-wait-ms", "200")
    try:
        remote = make_oracle(OracleConfig(oracle=url))
        local = make_oracle(OracleConfig(oracle=f"rm:{tiny_models['rm']}"))
        records = task.records("holdout")[:16]
        pairs = [([r.prompt], [r.reference], ["apple"]) for r in records]
        with ThreadPoolExecutor(16) as pool:  # 16 one-pair requests at once
            probs = list(pool.map(lambda args: remote.compare(*args), pairs))
        expected = local.compare(*(sum((list(p[i]) for p in pairs), []) for i in range(3)))
        assert torch.allclose(torch.cat(probs), expected, atol=1e-5)
        stats = health(url)
        assert stats["requests"] == 16 and stats["pairs"] == 16
        assert stats["batches"] < 16 and 1 < stats["largest"] <= 8  # gathered, never above --max-batch

        body = {"id": "same-id", "prompts": ["a TL;DR:"], "first": ["a"], "second": ["b"]}
        headers = {"Authorization": f"Bearer {TOKEN}"}
        first = post_json(url + "/compare", body, headers=headers, timeout=10, retries=0, backoff=0)
        again = post_json(url + "/compare", body, headers=headers, timeout=10, retries=0, backoff=0)
        assert first == again and health(url)["repeats"] == 1 and health(url)["pairs"] == 17  # answered, not rescored

        assert torch.allclose(remote.score(records[0].prompt.split()[:1], ["x"]), local.score(records[0].prompt.split()[:1], ["x"]))
        with pytest.raises(HTTPFailure, match="401"):
            post_json(url + "/compare", body, headers={}, timeout=10, retries=0, backoff=0)
    finally:
        stop(server)


def test_server_killed_and_restarted_mid_run_loses_and_doubles_no_label(tmp_path, tiny_models, prompts_jsonl, client_env):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(tiny_models["rm"], port)
    out = tmp_path / "run"
    budget = 24
    argv = ["train", "--policy", tiny_models["gpt2"], "--oracle", url, "--oracle-retries", "9", "--oracle-backoff", "0.2",
            "--data", prompts_jsonl, "--budget", str(budget), "--batch-size", "4", "--eval-every", str(budget),
            "--eval-size", "6", "--max-new-tokens", "4", "--quiet", "--out", str(out)]  # fmt: skip
    result = {}
    run = threading.Thread(target=lambda: result.setdefault("code", main(argv)))
    run.start()
    ledger = out / "queries.jsonl"
    try:
        while run.is_alive() and (not ledger.exists() or len(ledger.read_text().splitlines()) < 8):
            time.sleep(0.05)
        stop(server)  # mid-run: requests now fail until the new server answers
        assert run.is_alive(), "the run ended before the server was killed"
        server = start_server(tiny_models["rm"], port)
        run.join(timeout=300)
        served_after_restart = health(url)["pairs"]
    finally:
        stop(server)
    assert result["code"] == 0
    rows = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(budget))  # none lost, none twice
    assert served_after_restart > 0  # the new server did answer part of the run
    local = make_oracle(OracleConfig(oracle=f"rm:{tiny_models['rm']}"))
    probs = local.compare([r["prompt"] for r in rows], [r["first"] for r in rows], [r["second"] for r in rows])
    assert [r["first_wins"] for r in rows] == (probs > 0.5).tolist()  # every label is the oracle's own
    assert json.loads((out / "config.json").read_text())["oracle"]["oracle"] == url
    assert TOKEN not in Path(out / "config.json").read_text()
