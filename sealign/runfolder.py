"""The run folder: config, metrics, the label ledger, checkpoints, summary; owned by one process.

    runs/NAME/config.json  metrics.jsonl  queries.jsonl  summary.json  checkpoints/  tb/
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import filelock
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sealign.errors import SealignError
from sealign.records import Duels, Preferences

# A checkpoint is a folder checkpoints/last/ of tensors.safetensors and state.json: loading one
# never unpickles, so a run folder from elsewhere cannot run code. last.tmp/ is one being written,
# last.old/ the previous one while the new one is renamed into place.
LAST, WRITING, PREVIOUS = "last", "last.tmp", "last.old"
TENSORS, STATE = "tensors.safetensors", "state.json"
LEGACY = "state.pt"  # the pickled checkpoint of earlier versions


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
        """Atomic: the new checkpoint is written and synced beside the last one, then renamed into
        place, so a kill at any moment leaves one complete checkpoint to resume from."""
        root = self.path / "checkpoints"
        last, writing, previous = root / LAST, root / WRITING, root / PREVIOUS
        shutil.rmtree(writing, ignore_errors=True)  # a write a kill interrupted
        write_checkpoint(writing, state)
        if last.is_dir():  # else a kill came between the renames below, and `previous` is the good one
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(last, previous)
        os.replace(writing, last)
        _fsync(root)
        shutil.rmtree(previous, ignore_errors=True)

    def load_checkpoint(self) -> dict | None:
        """The last complete checkpoint, None before the first."""
        root = self.path / "checkpoints"
        if (root / LEGACY).is_file():
            raise SealignError(
                f"{root / LEGACY} is a pickled checkpoint of an earlier sealign, which is no longer loaded (it could run code); "
                "remove it to resume from the start, the labels replayed from queries.jsonl"
            )
        for name in (LAST, PREVIOUS):
            if (root / name).is_dir():
                return read_checkpoint(root / name)
        return None

    def write_summary(self, summary: dict) -> None:
        (self.path / "summary.json").write_text(json.dumps(summary, indent=1))


def _fsync(path: Path) -> None:
    """Push a file, or a folder's entries, to disk (a rename is durable once its folder is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


TENSOR, TUPLE, ITEMS = "__tensor__", "__tuple__", "__items__"  # the tags of a checkpoint's skeleton


def split_tensors(tree: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """A tree of dicts, lists, tuples, numbers, strings and tensors as (JSON-able skeleton, tensors
    by dotted path). A tensor's place holds {TENSOR: path}; a tuple and a dict with non-string
    keys (an optimizer's parameter indices) are tagged too, so `join_tensors` rebuilds them exactly.
    A tensor met twice (tied embeddings) is stored once: safetensors refuses shared memory."""
    tensors: dict[str, torch.Tensor] = {}
    seen: dict[tuple, str] = {}

    def walk(node: Any, path: str) -> Any:
        at = f"{path}." if path else ""
        if isinstance(node, torch.Tensor):
            node = node.detach()
            same = (node.device, node.data_ptr(), node.dtype, node.shape, node.stride())
            if node.numel() and same in seen:
                return {TENSOR: seen[same]}
            if path in tensors:
                raise ValueError(f"two tensors of the checkpoint are both named {path!r}")
            seen[same], tensors[path] = path, node.contiguous()
            return {TENSOR: path}
        if isinstance(node, dict):
            if all(isinstance(k, str) for k in node) and not (len(node) == 1 and next(iter(node)) in (TENSOR, TUPLE, ITEMS)):
                return {k: walk(v, at + k) for k, v in node.items()}
            return {ITEMS: [[k, walk(v, f"{at}{k}")] for k, v in node.items()]}
        if isinstance(node, (list, tuple)):
            items = [walk(v, f"{at}{i}") for i, v in enumerate(node)]
            return {TUPLE: items} if isinstance(node, tuple) else items
        return node  # json.dumps refuses anything that is not plain data

    return walk(tree, ""), tensors


def join_tensors(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The tree `split_tensors` took apart."""
    if isinstance(skeleton, list):
        return [join_tensors(v, tensors) for v in skeleton]
    if not isinstance(skeleton, dict):
        return skeleton
    tag = next(iter(skeleton)) if len(skeleton) == 1 else None
    if tag == TENSOR:
        return tensors[skeleton[TENSOR]]
    if tag == TUPLE:
        return tuple(join_tensors(v, tensors) for v in skeleton[TUPLE])
    if tag == ITEMS:
        return {k: join_tensors(v, tensors) for k, v in skeleton[ITEMS]}
    return {k: join_tensors(v, tensors) for k, v in skeleton.items()}


def write_checkpoint(path: Path, state: dict) -> None:
    """`state` into a new folder `path`: its tensors in one safetensors file, the rest as JSON, synced."""
    skeleton, tensors = split_tensors(state)
    path.mkdir()
    save_file(tensors, path / TENSORS)
    (path / STATE).write_text(json.dumps(skeleton), encoding="utf-8")
    for name in (TENSORS, STATE, "."):
        _fsync(path / name)


def read_checkpoint(path: str | Path) -> dict:
    """The state a checkpoint folder holds (on the CPU); a damaged one is one error line."""
    path = Path(path)
    try:
        return join_tensors(json.loads((path / STATE).read_text(encoding="utf-8")), load_file(path / TENSORS))
    except (OSError, SafetensorError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        reason = f"no tensor {e}" if isinstance(e, KeyError) else str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SealignError(
            f"checkpoint {path} is damaged ({reason}); remove it to resume from the start, the labels replayed from queries.jsonl"
        ) from None


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
