"""`--oracle human`: people answer "which is better?" on a small web page while the loop waits
(the paper's crowd annotators, §1 and Fig. 8), with the budget, the ledger and resume as for
any oracle.

The loop hands a batch of duels to `HumanOracle.label`, which puts them on the `Desk` and
blocks until each is answered or skipped. The page (FastAPI on uvicorn, in a thread of the
trainer) offers each waiting duel to one person at a time; one not answered within
`--label-timeout` seconds is offered to the next. Every answer is appended and fsync'ed to the
run's `human-labels.jsonl` the moment it arrives, keyed by what the duel shows;
the batch's labels then go to queries.jsonl in duel order like any oracle's. A run killed while
people label regenerates the same duels on resume (sampling is seeded), and the answered ones
come from that file: nobody is asked twice. A skip (or tie) is no label: it is counted, never
charged, and the loop asks about another duel instead.

Security: binds to 127.0.0.1 unless told otherwise, and then requires a token; responses are
shown with textContent (never as HTML) under a Content-Security-Policy without inline script;
request bodies are validated by pydantic; an internal error is a bare 500.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal, Optional, Sequence

import torch
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from sealign.config import OracleConfig
from sealign.data import prompt_text
from sealign.errors import SealignError
from sealign.oracles.base import Labels
from sealign.progress import console
from sealign.runfolder import append_jsonl, read_jsonl

JOURNAL = "human-labels.jsonl"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def duel_key(prompt: str, first: str, second: str) -> str:
    """Names one question by what it shows: a person is never asked the same question twice in a
    run (a duel that recurs, same prompt and the same two responses, gets the answer on record)."""
    return hashlib.sha256("\0".join((prompt, first, second)).encode()).hexdigest()[:20]


@dataclass
class Duel:
    key: str
    prompt: str
    first: str
    second: str
    holder: Optional[str] = None  # the labeller it is shown to
    until: float = 0.0  # when it may be offered to someone else

    @property
    def swapped(self) -> bool:
        """Whether the first response is shown on the right: random per duel, the same on every showing."""
        return int(self.key[:8], 16) % 2 == 1


class Desk:
    """The duels waiting for people, and their answers (thread-safe: the page's requests and the
    loop meet here)."""

    def __init__(self, journal: Path, budget: int, timeout: float):
        self.journal, self.budget, self.timeout = journal, budget, timeout
        self.cond = threading.Condition()
        self.waiting: dict[str, Duel] = {}  # in the order they were posted
        self.answers: dict[str, str] = {}  # key -> "first" | "second" | "skip"
        self.by_labeller: dict[str, int] = {}
        self.finished = False
        for row in read_jsonl(journal):  # a torn last line (a kill mid-write) is no answer, and is cut
            self.answers[row["key"]] = row["choice"]

    @property
    def labels(self) -> int:
        return sum(choice != "skip" for choice in self.answers.values())

    def post(self, duels: list[Duel]) -> None:
        with self.cond:
            self.waiting.update({d.key: d for d in duels if d.key not in self.answers})

    def take(self, labeller: str) -> Optional[Duel]:
        """The oldest waiting duel not shown to anyone else right now, reserved for `labeller`."""
        now = time.monotonic()
        with self.cond:
            for duel in self.waiting.values():
                if duel.holder == labeller and duel.until > now:
                    return duel  # a reload shows the same duel again
            for duel in self.waiting.values():
                if duel.holder is None or duel.until <= now:
                    duel.holder, duel.until = labeller, now + self.timeout
                    return duel
        return None

    def answer(self, key: str, labeller: str, side: str) -> bool:
        """Record a choice ("left", "right" as shown, or "skip"); False if the duel is not waiting
        (answered by someone else, or never posted). Written to disk before it counts."""
        with self.cond:
            duel = self.waiting.get(key)
            if duel is None:
                return False
            choice = "skip" if side == "skip" else ("first" if (side == "left") != duel.swapped else "second")
            row = {"key": key, "choice": choice, "labeller": labeller, "prompt": duel.prompt, "first": duel.first, "second": duel.second}
            append_jsonl(self.journal, [row])
            self.answers[key] = choice
            del self.waiting[key]
            self.by_labeller[labeller] = self.by_labeller.get(labeller, 0) + 1
            self.cond.notify_all()
        return True

    def wait(self, keys: list[str]) -> dict[str, str]:
        with self.cond:
            self.cond.wait_for(lambda: all(k in self.answers for k in keys))
            return {k: self.answers[k] for k in keys}

    def progress(self, labeller: str = "") -> dict:
        with self.cond:
            return {
                "labels": self.labels,
                "budget": self.budget,
                "queue": len(self.waiting),
                "skips": sum(choice == "skip" for choice in self.answers.values()),
                "yours": self.by_labeller.get(labeller, 0),
                "finished": self.finished,
            }


class Answer(BaseModel):
    """A labeller's choice, as the page sends it."""

    key: str = Field(min_length=1, max_length=64, pattern=r"^[0-9a-f]+$")
    labeller: str = Field(min_length=1, max_length=64)
    choice: Literal["left", "right", "skip"]


def build_app(desk: Desk, token: Optional[str]) -> FastAPI:
    """The labelling page and its three endpoints."""
    def authorize(authorization: Optional[str] = Header(default=None)) -> None:
        if token is not None and not hmac.compare_digest(authorization or "", f"Bearer {token}"):
            raise HTTPException(status_code=401, detail="missing or wrong token")

    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    files = resources.files("sealign.oracles") / "page"
    kinds = {"index.html": "text/html", "page.js": "text/javascript", "page.css": "text/css"}

    @app.middleware("http")
    async def headers(request: Request, call_next):
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = "default-src 'self'; script-src 'self'; style-src 'self'; object-src 'none'"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        return JSONResponse({"detail": "internal error"}, status_code=500)

    def page(name: str) -> Response:
        return Response((files / name).read_bytes(), media_type=kinds[name])

    app.get("/", include_in_schema=False)(lambda: page("index.html"))
    app.get("/page.js", include_in_schema=False)(lambda: page("page.js"))
    app.get("/page.css", include_in_schema=False)(lambda: page("page.css"))

    @app.get("/api/next", dependencies=[Depends(authorize)])
    def next_duel(labeller: str = "") -> dict:
        if not 0 < len(labeller) <= 64:
            raise HTTPException(status_code=422, detail="labeller: 1 to 64 characters")
        duel = desk.take(labeller)
        shown = None
        if duel is not None:
            left, right = (duel.second, duel.first) if duel.swapped else (duel.first, duel.second)
            shown = {"key": duel.key, "prompt": prompt_text(duel.prompt), "left": left, "right": right}
        return {"duel": shown, "progress": desk.progress(labeller)}

    @app.post("/api/answer", dependencies=[Depends(authorize)])
    def answer(body: Answer) -> dict:
        if not desk.answer(body.key, body.labeller, body.choice):
            raise HTTPException(status_code=409, detail="this duel is not waiting for an answer")
        return {"status": "recorded", "progress": desk.progress(body.labeller)}

    @app.get("/api/progress", dependencies=[Depends(authorize)])
    def progress() -> dict:
        return desk.progress()

    return app


class HumanOracle:
    """The Oracle interface over people. Labels only the training duels: it has no P(a > b) to
    give an evaluation (the loop judges those with the task's reward)."""

    scores = False

    def __init__(self, cfg: OracleConfig):
        self.cfg = cfg
        self.token = os.environ.get(cfg.label_token_env) or None
        if cfg.label_host not in LOOPBACK and self.token is None:
            raise SealignError(f"--label-host {cfg.label_host}: off 127.0.0.1 the page needs a token in ${cfg.label_token_env}")
        _check_port_free(cfg.label_host, cfg.label_port)
        self.calls = self.labelled = self.skipped = 0
        self.desk: Optional[Desk] = None
        self._server = self._thread = None

    def attach(self, folder: Path, budget: int) -> None:
        """Open the run's answer file and start serving the page."""
        import uvicorn

        self.desk = Desk(folder / JOURNAL, budget, self.cfg.label_timeout)
        config = uvicorn.Config(build_app(self.desk, self.token), host=self.cfg.label_host, port=self.cfg.label_port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="sealign-label-page", daemon=True)
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise SealignError(f"the labelling page could not listen on {self.cfg.label_host}:{self.cfg.label_port}")
            time.sleep(0.02)
        link = f"http://{self.cfg.label_host}:{self.cfg.label_port}/" + ("?token=…" if self.token else "")
        console.print(f"labelling page: {link}  ({self.desk.labels} of {budget} labels so far)")

    def compare(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> torch.Tensor:
        raise SealignError("people label training duels only; the evaluation needs another oracle")

    def label(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> Labels:
        """Wait until every duel is answered or skipped; a duel answered before in this run (an
        earlier session's, killed mid-batch) is not asked again."""
        if self.desk is None:
            raise RuntimeError("HumanOracle.attach(run folder, budget) must come first")
        duels = [Duel(duel_key(p, a, b), p, a, b) for p, a, b in zip(prompts, responses_a, responses_b)]
        self.desk.post(duels)
        choices = self.desk.wait([d.key for d in duels])
        answered = torch.tensor([choices[d.key] != "skip" for d in duels])
        self.calls += len(duels)
        self.labelled += int(answered.sum())
        self.skipped += int((~answered).sum())
        first_wins = torch.tensor([choices[d.key] == "first" for d in duels if choices[d.key] != "skip"], dtype=torch.bool)
        return Labels(first_wins, answered)

    def skip(self, n: int) -> None:
        self.labelled += n

    def close(self) -> None:
        """Tell the page the run is over, then stop serving it."""
        if self._server is not None:
            with self.desk.cond:
                self.desk.finished = True
            time.sleep(1.0)  # pages polling now learn that all labels are in
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._server = None


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise SealignError(f"--label-port {port}: cannot listen on {host} ({e.strerror})") from None
