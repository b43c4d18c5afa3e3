"""The run folder: config, metrics, the label ledger, checkpoints, summary; owned by one process.

    runs/NAME/config.json  metrics.jsonl  queries.jsonl  summary.json  checkpoints/  tb/
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import filelock
import torch

from sealign.errors import SealignError
from sealign.records import Duels, Preferences

CHECKPOINT = "checkpoints/state.pt"


def append_jsonl(path: Path, rows: list[dict]) -> None:
    """Append rows and push them to disk before returning: labels are precious."""
    with path.open("a", encoding="utf-8") as f:
        f.write("".join(json.dumps(row) + "\n" for row in rows))
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path, *, repair: bool = True) -> list[dict]:
    """Rows of a JSONL file. A torn last line (a kill mid-write) is cut off the file (left alone,
    and only skipped, when not `repair`: a reader must never cut a line a live run is writing);
    a bad line anywhere else means the file was damaged, and nothing is dropped silently."""
    if not path.is_file():
        return []
    lines = path.read_bytes().split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    rows = []
    for lineno, raw in enumerate(lines, start=1):
        try:
            rows.append(json.loads(raw))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise SealignError(f"{path}:{lineno}: damaged line; fix or remove it before resuming") from None
    if tail and repair:
        with path.open("r+b") as f:
            f.truncate(path.stat().st_size - len(tail))
    return rows


class QueryLedger:
    """queries.jsonl: every oracle-labelled training pair, written as soon as the label arrives;
    and unanswered.jsonl: the duels the oracle left without a label (a judge's unparseable
    answer, a person's skip), with the query index they were asked at.

    Storage only: it never calls the oracle. On resume it already holds what was asked after
    the last checkpoint, and the collect step replays it instead of asking again
    (`sealign.loop.collect.label_duels`), so no label is ever asked twice or lost.
    """

    def __init__(self, path: Path):
        self.path = path
        self.rows = read_jsonl(path)
        self.unanswered_path = path.with_name("unanswered.jsonl")
        self.unanswered = {(r["at"], r["prompt"], r["first"], r["second"]) for r in read_jsonl(self.unanswered_path)}

    def __len__(self) -> int:
        return len(self.rows)

    def recorded(self, start: int, n: int) -> list[dict]:
        """The rows of query indices start .. start + n - 1 that exist already."""
        return self.rows[start : start + n]

    def append(self, rows: list[dict]) -> None:
        append_jsonl(self.path, rows)
        self.rows.extend(rows)

    def append_unanswered(self, duels: list[tuple[int, str, str, str]]) -> None:
        """(query index asked at, prompt, first, second) of duels that got no label."""
        append_jsonl(self.unanswered_path, [{"at": at, "prompt": p, "first": a, "second": b} for at, p, a, b in duels])
        self.unanswered.update(duels)

    def preferences(self, start: int, stop: int) -> Preferences:
        """The recorded labels start .. stop - 1 as (chosen, rejected) pairs for the learner."""
        rows = self.rows[start:stop]
        pairs = Duels([r["prompt"] for r in rows], [r["first"] for r in rows], [r["second"] for r in rows])
        return Preferences.from_labels(pairs, torch.tensor([r["first_wins"] for r in rows]))


LOCK = ".lock"


class RunFolder:
    """Owns the files of one run, for one process at a time: creating it refuses to overwrite,
    resuming requires it, and either holds an exclusive lock on the folder until `close`."""

    def __init__(self, path: str | Path, *, resume: bool):
        self.path = Path(path)
        self._lock = filelock.FileLock(self.path / LOCK, timeout=0)
        if resume:
            if not (self.path / "config.json").is_file():
                raise SealignError(f"cannot resume {str(self.path)!r}: no config.json there")
            self._take_lock()  # before anything is read or written: reading the ledger may cut a torn line
            (self.path / "checkpoints").mkdir(exist_ok=True)
        elif self.path.exists():
            raise SealignError(f"run folder {str(self.path)!r} already exists (use --resume to continue it)")
        self.queries = QueryLedger(self.path / "queries.jsonl")

    def _take_lock(self) -> None:
        """The kernel drops the lock of a process that dies, so a killed run never blocks its resume."""
        try:
            self._lock.acquire()
        except filelock.Timeout:
            raise SealignError(f"run folder {str(self.path)!r} is in use by another sealign process; wait for it to end") from None

    def create(self, config: dict) -> None:
        """Lay out a new run: its folders and the config that is enough to rerun it."""
        try:
            self.path.mkdir(parents=True)
        except FileExistsError:  # another process created it since this one checked
            raise SealignError(f"run folder {str(self.path)!r} already exists (use --resume to continue it)") from None
        self._take_lock()
        (self.path / "checkpoints").mkdir()
        (self.path / "config.json").write_text(json.dumps(config, indent=1))

    def read_config(self) -> dict:
        try:
            return json.loads((self.path / "config.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SealignError(f"{self.path / 'config.json'}: not valid JSON ({e.msg})") from None

    def append_metrics(self, row: dict) -> None:
        append_jsonl(self.path / "metrics.jsonl", [row])

    def append_completions(self, rows: list[dict]) -> None:
        """Sample completions of an evaluation (prompt, response, reference, win)."""
        append_jsonl(self.path / "completions.jsonl", rows)

    def close(self) -> None:
        """Let another process have the folder."""
        self._lock.release()

    def metrics(self) -> list[dict]:
        return read_jsonl(self.path / "metrics.jsonl")

    def keep_metrics_until(self, queries: int) -> None:
        """Drop evaluation rows (and their completions) newer than a checkpoint: the resumed run
        writes them again."""
        for name in ("metrics.jsonl", "completions.jsonl"):
            path = self.path / name
            if not path.is_file():
                continue
            rows = [r for r in read_jsonl(path) if r["queries"] <= queries]
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
            os.replace(tmp, path)

    def save_checkpoint(self, state: dict) -> None:
        """Atomic: the previous checkpoint stays valid until the new one is complete."""
        path = self.path / CHECKPOINT
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    def load_checkpoint(self) -> dict | None:
        path = self.path / CHECKPOINT
        return torch.load(path, weights_only=False) if path.is_file() else None

    def write_summary(self, summary: dict) -> None:
        (self.path / "summary.json").write_text(json.dumps(summary, indent=1))


@dataclass
class RunResults:
    """A run folder's contents as data, for notebooks and scripts."""

    path: Path
    config: dict  # config.json: every setting, pi_ref's fingerprint
    metrics: list[dict]  # metrics.jsonl: one row per evaluation, "queries" is the x-axis
    queries: list[dict]  # queries.jsonl: every oracle label, in the order it was asked
    summary: Optional[dict]  # summary.json; None while the run is unfinished

    @property
    def finished(self) -> bool:
        return self.summary is not None


def read_run(path: str | Path) -> RunResults:
    """Read a run folder without touching it (it may be running: no lock is taken, nothing is cut)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise SealignError(f"{str(path)!r} is not a run folder (no config.json)")
    summary = path / "summary.json"
    return RunResults(
        path,
        json.loads((path / "config.json").read_text(encoding="utf-8")),
        read_jsonl(path / "metrics.jsonl", repair=False),
        read_jsonl(path / "queries.jsonl", repair=False),
        json.loads(summary.read_text(encoding="utf-8")) if summary.is_file() else None,
    )
