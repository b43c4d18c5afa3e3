"""Experiment trackers (`--report-to`): TensorBoard in the run folder's tb/, Weights & Biases,
trackio. Each gets the learner's scalars every `--log-every` steps, every evaluation's row, and
a table of sample completions, all indexed by queries (the paper's x-axis). wandb and trackio
are optional extras (`pip install 'sealign[wandb]'`, `'sealign[trackio]'`); their offline modes
(WANDB_MODE=offline, trackio's local database) need no network.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any, Optional, Protocol

REPORTERS = ("tensorboard", "wandb", "trackio", "none")
PROJECT = "sealign"


def parse_report_to(spec: str) -> list[str]:
    """`tensorboard,wandb` -> the trackers; `none` -> none. Unknown or uninstalled ones are errors."""
    from sealign.errors import SealignError

    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in REPORTERS]
    if unknown or not names:
        raise SealignError(f"unknown --report-to {spec!r} (known: {', '.join(REPORTERS)}, comma-separated)")
    if "none" in names:
        if len(names) > 1:
            raise SealignError("--report-to none cannot be combined with a tracker")
        return []
    for name in ("wandb", "trackio"):
        if name in names and importlib.util.find_spec(name) is None:
            raise SealignError(f"--report-to {name} needs the {name} package: pip install 'sealign[{name}]'")
    return names


class Tracker(Protocol):
    def log(self, scalars: dict[str, float], step: int) -> None: ...
    def table(self, name: str, rows: list[dict], step: int) -> None: ...
    def close(self) -> None: ...


class TensorBoard:
    """tb/ in the run folder. A resumed run first forgets the points after its checkpoint, which
    it writes again."""

    def __init__(self, folder: Path, resume_at: Optional[int]):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder / "tb"), **({"purge_step": resume_at + 1} if resume_at is not None else {}))

    def log(self, scalars: dict[str, float], step: int) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def table(self, name: str, rows: list[dict], step: int) -> None:
        lines = [" | ".join(str(v) for v in r.values()) for r in rows]
        self.writer.add_text(name, "\n\n".join(lines), step)

    def close(self) -> None:
        self.writer.close()


def _run_id(folder: Path) -> str:
    """The same id for every session of a run, so a resume continues the tracker's run."""
    return hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]


class Wandb:
    def __init__(self, folder: Path, config: dict):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=PROJECT, name=folder.name, id=_run_id(folder), resume="allow", dir=str(folder), config=config)

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def table(self, name: str, rows: list[dict], step: int) -> None:
        columns = list(rows[0]) if rows else []
        self.run.log({name: self.wandb.Table(columns=columns, data=[list(r.values()) for r in rows])}, step=step)

    def close(self) -> None:
        self.run.finish()


class Trackio:
    def __init__(self, folder: Path, config: dict):
        import trackio

        self.trackio = trackio
        self.run = trackio.init(project=PROJECT, name=f"{folder.name}-{_run_id(folder)[:6]}", config=config, resume="allow")

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.trackio.log(scalars, step=step)

    def table(self, name: str, rows: list[dict], step: int) -> None:
        columns = list(rows[0]) if rows else []
        self.trackio.log({name: self.trackio.Table(columns=columns, data=[list(r.values()) for r in rows])}, step=step)

    def close(self) -> None:
        self.trackio.finish()


class Trackers:
    """Every tracker of --report-to behind one call."""

    def __init__(self, names: list[str], folder: Path, config: dict, resume_at: Optional[int]):
        makers: dict[str, Any] = {
            "tensorboard": lambda: TensorBoard(folder, resume_at),
            "wandb": lambda: Wandb(folder, config),
            "trackio": lambda: Trackio(folder, config),
        }
        self.trackers: list[Tracker] = [makers[n]() for n in names]

    def log(self, scalars: dict[str, Any], step: int) -> None:
        numbers = {k: v for k, v in scalars.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for tracker in self.trackers:
            tracker.log(numbers, step)

    def table(self, name: str, rows: list[dict], step: int) -> None:
        for tracker in self.trackers:
            tracker.table(name, rows, step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []
