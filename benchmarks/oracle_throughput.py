"""Throughput of `sealign serve-oracle` (pairs/s) with dynamic batching vs batch size 1.

    .venv/bin/python benchmarks/oracle_throughput.py [--requests 512] [--clients 32] [--threads 1]

Serves the tiny random GPT-2 reward model (sealign.tiny) on 127.0.0.1 twice — `--max-batch 64
--max-wait-ms 5`, then `--max-batch 1` — and sends one-pair /compare requests from many
client threads at once, as many actors (or one actor's many prompts) would. Prints pairs/s
and the batch sizes the server formed, and writes them to --json if given. For scale, it
also times the reward model alone, in this process, at batch sizes 1 and 64: the ceiling a
server could reach without any HTTP cost.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from sealign.config import OracleConfig, TaskConfig
from sealign.oracles import make_oracle
from sealign.oracles.remote import RemoteOracle
from sealign.oracles.serve import launch
from sealign.tasks import make_task
from sealign.tiny import build_tiny_models


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(rm: str, pairs: list[tuple[str, str, str]], clients: int, threads: int, *server_args: str) -> dict:
    port = free_port()
    server = launch(f"rm:{rm}", port, *server_args, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    try:
        oracle = RemoteOracle(OracleConfig(oracle=f"http://127.0.0.1:{port}"))
        ask = lambda pair: oracle.compare([pair[0]], [pair[1]], [pair[2]])  # noqa: E731
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(ask, pairs[: 2 * clients]))  # warm-up
            start = time.perf_counter()
            list(pool.map(ask, pairs))
            seconds = time.perf_counter() - start
        stats = json.loads(__import__("urllib.request").request.urlopen(f"http://127.0.0.1:{port}/health").read())
    finally:
        server.kill()
        server.wait()
    return {"server": " ".join(server_args), "pairs_per_s": round(len(pairs) / seconds, 1), "seconds": round(seconds, 2),
            "batches": stats["batches"], "largest_batch": stats["largest"],
            "mean_batch": round(stats["pairs"] / stats["batches"], 1)}  # fmt: skip


def in_process(rm: str, pairs: list[tuple[str, str, str]], batch: int) -> dict:
    """Pairs/s of the reward-model oracle itself, `batch` pairs per call, no server."""
    torch.set_num_threads(1)
    oracle = make_oracle(OracleConfig(oracle=f"rm:{rm}", oracle_batch_size=2 * batch))
    start = time.perf_counter()
    for i in range(0, len(pairs), batch):
        chunk = pairs[i : i + batch]
        oracle.compare([p[0] for p in chunk], [p[1] for p in chunk], [p[2] for p in chunk])
    return {"server": f"none: in-process, {batch} pairs per call", "pairs_per_s": round(len(pairs) / (time.perf_counter() - start), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=512)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    task = make_task(TaskConfig(n_train=10, n_holdout=args.requests))
    records = task.records("holdout")
    pairs = [(r.prompt, r.reference, " ".join(r.prompt.split()[:3])) for r in records]
    with tempfile.TemporaryDirectory() as root:
        rm = build_tiny_models(root, task.build_tokenizer())["rm"]
        rows = [
            measure(rm, pairs, args.clients, args.threads, "--max-batch", "64", "--max-wait-ms", "5"),
            measure(rm, pairs, args.clients, args.threads, "--max-batch", "1", "--max-wait-ms", "0"),
        ]
        ceiling = [in_process(rm, pairs, 64), in_process(rm, pairs, 1)]
    for row in rows + ceiling:
        print(json.dumps(row))
    print(f"dynamic batching / batch 1: {rows[0]['pairs_per_s'] / rows[1]['pairs_per_s']:.1f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"requests": args.requests, "clients": args.clients, "threads": args.threads, "runs": rows + ceiling}, f, indent=1)


if __name__ == "__main__":
    main()
