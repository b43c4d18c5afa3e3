"""The run folder (DESIGN.md contract): config, metrics, the label ledger, checkpoints, summary.

    runs/NAME/config.json  metrics.jsonl  queries.jsonl  summary.json  checkpoints/  tb/
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from sealign.errors import SealignError
from sealign.records import Duels, Preferences

CHECKPOINT = "checkpoints/state.pt"


def _append_jsonl(path: Path, rows: list[dict]) -> None:
    """Append rows and push them to disk before returning: labels are precious."""
    with path.open("a", encoding="utf-8") as f:
        f.write("".join(json.dumps(row) + "\n" for row in rows))
        f.flush()
        os.fsync(f.fileno())


def _read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file. A torn last line (a kill mid-write) is cut off the file; a bad line
    anywhere else means the file was damaged, and nothing is dropped silently."""
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
    if tail:
        with path.open("r+b") as f:
            f.truncate(path.stat().st_size - len(tail))
    return rows


class QueryLedger:
    """queries.jsonl: every oracle-labelled training pair, written as soon as the label arrives.

    On resume the ledger already holds pairs labelled after the last checkpoint; `label` hands
    those back instead of asking the oracle again, so no label is ever asked twice or lost.
    """

    def __init__(self, path: Path):
        self.path = path
        self.rows = _read_jsonl(path)
        self.replay_mismatches = 0  # recorded pairs that differ from the regenerated ones
        self.asked = 0  # labels asked of the oracle in this session

    def __len__(self) -> int:
        return len(self.rows)

    def label(self, duels: Duels, start: int, step: int, oracle: Any) -> tuple[list[int], torch.Tensor]:
        """Record labels for query indices start, start + 1, ..., asking the oracle only for duels
        not recorded yet. Returns the positions (in `duels`) that hold a label, in order, and
        their labels z (True = first preferred); a duel the oracle could not judge gets none."""
        n = len(duels.prompts)
        recorded = self.rows[start : start + n]
        oracle.skip(len(recorded))
        kept = list(range(len(recorded)))
        fresh = list(range(len(recorded), n))
        if fresh:
            tail = duels.subset(fresh)
            labels = oracle.label(tail.prompts, tail.first, tail.second)
            answered = [i for i, ok in zip(fresh, labels.answered.tolist()) if ok]
            new_rows = [
                {
                    "index": start + len(kept) + j,
                    "step": step,
                    "prompt": duels.prompts[i],
                    "first": duels.first[i],
                    "second": duels.second[i],
                    "first_wins": bool(w),
                    "version": duels.version,
                }
                for j, (i, w) in enumerate(zip(answered, labels.first_wins.tolist()))
            ]
            _append_jsonl(self.path, new_rows)
            self.rows.extend(new_rows)
            self.asked += len(fresh)
            kept += answered
        self.replay_mismatches += sum(
            (r["prompt"], r["first"], r["second"]) != (p, a, b)
            for r, p, a, b in zip(recorded, duels.prompts, duels.first, duels.second)
        )
        return kept, torch.tensor([r["first_wins"] for r in self.rows[start : start + len(kept)]], dtype=torch.bool)

    def preferences(self, start: int, stop: int) -> Preferences:
        """The recorded labels start .. stop - 1 as (chosen, rejected) pairs for the learner."""
        rows = self.rows[start:stop]
        pairs = Duels([r["prompt"] for r in rows], [r["first"] for r in rows], [r["second"] for r in rows])
        return Preferences.from_labels(pairs, torch.tensor([r["first_wins"] for r in rows]))


class RunFolder:
    """Owns the files of one run; creating it refuses to overwrite, resuming requires it."""

    def __init__(self, path: str | Path, *, resume: bool):
        self.path = Path(path)
        if resume:
            if not (self.path / "config.json").is_file():
                raise SealignError(f"cannot resume {str(self.path)!r}: no config.json there")
            (self.path / "checkpoints").mkdir(exist_ok=True)
        elif self.path.exists():
            raise SealignError(f"run folder {str(self.path)!r} already exists (use --resume to continue it)")
        self.queries = QueryLedger(self.path / "queries.jsonl")
        self._tb = None

    def create(self, config: dict) -> None:
        """Lay out a new run: its folders and the config that is enough to rerun it."""
        (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)
        (self.path / "config.json").write_text(json.dumps(config, indent=1))

    def read_config(self) -> dict:
        try:
            return json.loads((self.path / "config.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SealignError(f"{self.path / 'config.json'}: not valid JSON ({e.msg})") from None

    def append_metrics(self, row: dict) -> None:
        _append_jsonl(self.path / "metrics.jsonl", [row])

    def log_scalars(self, row: dict) -> None:
        """Mirror a metrics row to TensorBoard, indexed by queries."""
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.path / "tb"))
        for key, value in row.items():
            if key != "queries" and isinstance(value, (int, float)):
                self._tb.add_scalar(key, value, row["queries"])

    def purge_scalars_after(self, queries: int) -> None:
        """On resume, TensorBoard forgets points past the checkpoint, which are written again."""
        from torch.utils.tensorboard import SummaryWriter

        self._tb = SummaryWriter(str(self.path / "tb"), purge_step=queries + 1)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()

    def metrics(self) -> list[dict]:
        return _read_jsonl(self.path / "metrics.jsonl")

    def keep_metrics_until(self, queries: int) -> None:
        """Drop evaluation rows newer than a checkpoint: the resumed run writes them again."""
        rows = [r for r in self.metrics() if r["queries"] <= queries]
        path = self.path / "metrics.jsonl"
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
