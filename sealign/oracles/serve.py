"""`sealign serve-oracle`: any oracle behind HTTP, with dynamic batching (the paper serves its
Skywork reward model this way, §5.1).

Why FastAPI on uvicorn with our own batcher, and not Mosec or LitServe. Mosec (the paper's
choice) batches well, but runs a Rust front end that talks to Python worker *processes*
over IPC: the oracle is rebuilt inside its workers, the server cannot be started from a test
in-process, and its batching is hidden from us. LitServe batches too (max_batch_size,
batch_timeout) but also spawns worker processes and brings a large dependency tree. An
oracle here is one model on one device that should see one batch at a time, so one process
suffices: FastAPI gives JSON bodies validated by pydantic (no pickle), uvicorn the asyncio
server, and the batcher below is ~50 lines whose statistics (batches, sizes) the health
endpoint reports, which is how the tests check that requests were batched.

Requests carry an id. An answer is kept for the last `REMEMBER` ids, and a repeated id (a
client retrying after a lost answer) gets the same answer without scoring again, so a retry
never double-counts. After a restart the memory is gone, but scoring is a pure function of
the request, so a client that retries against the new server gets the same answer.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import subprocess
import sys
import time
import urllib.request
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import uvicorn
from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel

from sealign.oracles.base import Oracle

REMEMBER = 4096  # answered request ids kept for repeats


@dataclass
class BatchStats:
    requests: int = 0  # distinct requests answered
    repeats: int = 0  # requests whose id had been answered (or was in flight) already
    pairs: int = 0  # items scored
    batches: int = 0  # calls into the oracle
    largest: int = 0  # items in the largest batch
    sizes: dict[int, int] = field(default_factory=dict)  # batch size -> count


class Batcher:
    """Gathers requests that arrive within `max_wait` seconds of the first, up to `max_batch`
    items, and scores them in one call of `fn` on a single worker thread (one batch on the
    model at a time). A request larger than `max_batch` is scored alone, never split."""

    def __init__(self, fn: Callable[[list], list], max_batch: int, max_wait: float, stats: BatchStats):
        self.fn, self.max_batch, self.max_wait, self.stats = fn, max_batch, max_wait, stats
        self.queue: asyncio.Queue = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1)
        self.held: Optional[tuple[list, asyncio.Future]] = None  # arrived too late for the last batch

    async def submit(self, items: list) -> list:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((items, future))
        return await future

    async def _next(self, timeout: Optional[float]) -> tuple[list, asyncio.Future]:
        if self.held is not None:
            request, self.held = self.held, None
            return request
        return await (self.queue.get() if timeout is None else asyncio.wait_for(self.queue.get(), timeout))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            group = [await self._next(None)]
            size = len(group[0][0])
            deadline = loop.time() + self.max_wait
            while size < self.max_batch and (left := deadline - loop.time()) > 0:
                try:
                    request = await self._next(left)
                except asyncio.TimeoutError:
                    break
                if size + len(request[0]) > self.max_batch:
                    self.held = request
                    break
                group.append(request)
                size += len(request[0])
            flat = [item for items, _ in group for item in items]
            try:
                results = await loop.run_in_executor(self.executor, self.fn, flat)
            except Exception as e:  # the oracle failed: every waiting request hears why
                for _, future in group:
                    future.set_exception(e)
                continue
            self.stats.batches += 1
            self.stats.pairs += size
            self.stats.largest = max(self.stats.largest, size)
            self.stats.sizes[size] = self.stats.sizes.get(size, 0) + 1
            start = 0
            for items, future in group:
                future.set_result(results[start : start + len(items)])
                start += len(items)


class CompareRequest(BaseModel):
    id: str  # the client's request id: a repeat gets the first answer
    prompts: list[str]
    first: list[str]
    second: list[str]


class ScoreRequest(BaseModel):
    id: str
    prompts: list[str]
    responses: list[str]


def _json_floats(values: list[float]) -> list[Optional[float]]:
    """NaN (no answer) is not JSON: it travels as null."""
    return [None if math.isnan(v) else v for v in values]


def build_app(oracle: Oracle, spec: str, *, max_batch: int, max_wait: float, token: Optional[str]) -> Any:
    """The FastAPI app: GET /health, POST /compare, POST /score (reward oracles only)."""
    stats = BatchStats()
    answers: OrderedDict[str, Any] = OrderedDict()  # id -> answer (or the future of one in flight)
    batchers: dict[str, Batcher] = {}

    def compare(items: list[tuple[str, str, str]]) -> list[float]:
        prompts, first, second = map(list, zip(*items))
        return oracle.compare(prompts, first, second).tolist()

    def score(items: list[tuple[str, str]]) -> list[float]:
        prompts, responses = map(list, zip(*items))
        return oracle.score(prompts, responses).tolist()

    async def lifespan(app: FastAPI):
        batchers["compare"] = Batcher(compare, max_batch, max_wait, stats)
        batchers["score"] = Batcher(score, max_batch, max_wait, stats)
        tasks = [asyncio.create_task(b.run()) for b in batchers.values()]
        yield
        for task in tasks:
            task.cancel()

    app = FastAPI(title="sealign oracle", lifespan=lifespan)

    def authorize(authorization: Optional[str]) -> None:
        if token is not None and not hmac.compare_digest(authorization or "", f"Bearer {token}"):
            raise HTTPException(status_code=401, detail="missing or wrong bearer token")

    async def answer(request_id: str, kind: str, items: list) -> list[Optional[float]]:
        if request_id in answers:
            stats.repeats += 1
            known = answers[request_id]
            return await asyncio.shield(known) if isinstance(known, asyncio.Future) else known
        future = asyncio.ensure_future(batchers[kind].submit(items))
        answers[request_id] = future
        try:
            result = _json_floats(await asyncio.shield(future))
        except Exception:
            del answers[request_id]  # a failed request may be tried again
            raise
        answers[request_id] = result
        stats.requests += 1
        while len(answers) > REMEMBER:
            answers.popitem(last=False)
        return result

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "oracle": spec, "scores": bool(oracle.scores), "max_batch": max_batch, **stats.__dict__}

    @app.post("/compare")
    async def compare_endpoint(body: CompareRequest, authorization: Optional[str] = Header(default=None)) -> dict:
        authorize(authorization)
        if not len(body.prompts) == len(body.first) == len(body.second):
            raise HTTPException(status_code=400, detail="prompts, first and second must have the same length")
        probs = await answer(body.id, "compare", list(zip(body.prompts, body.first, body.second)))
        return {"id": body.id, "probs": probs}

    @app.post("/score")
    async def score_endpoint(body: ScoreRequest, authorization: Optional[str] = Header(default=None)) -> dict:
        authorize(authorization)
        if not oracle.scores:
            raise HTTPException(status_code=400, detail=f"oracle {spec} gives preferences, not scalar rewards")
        if len(body.prompts) != len(body.responses):
            raise HTTPException(status_code=400, detail="prompts and responses must have the same length")
        scores = await answer(body.id, "score", list(zip(body.prompts, body.responses)))
        return {"id": body.id, "scores": scores}

    return app


def serve(oracle: Oracle, spec: str, host: str, port: int, *, max_batch: int, max_wait: float, token: Optional[str]) -> None:
    """Serve until interrupted."""
    app = build_app(oracle, spec, max_batch=max_batch, max_wait=max_wait, token=token)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def launch(spec: str, port: int, *extra: str, env: Optional[dict[str, str]] = None, wait: float = 120.0) -> subprocess.Popen:
    """Start `sealign serve-oracle --oracle SPEC --port PORT EXTRA...` on 127.0.0.1 in a new
    process and return it once /health answers (for scripts and tests)."""
    cmd = [sys.executable, "-m", "sealign", "serve-oracle", "--oracle", spec, "--port", str(port), *extra]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve-oracle exited: {proc.stderr.read().decode().strip()}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).close()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"serve-oracle did not answer on port {port} within {wait:.0f} s")
