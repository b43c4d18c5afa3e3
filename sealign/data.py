"""Prompt records and their JSONL form, shared by built-in tasks and user data."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

from sealign.errors import SealignError


@dataclass(frozen=True)
class PromptRecord:
    """A prompt x and the reference response the win rate is measured against (§5.2)."""

    prompt: str
    reference: str


def write_records(path: str | Path, records: Iterable[PromptRecord]) -> int:
    """Write records as JSONL (`{"prompt": ..., "reference": ...}` per line); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(asdict(record)) + "\n")
            n += 1
    return n


def read_records(
    path: str | Path,
    prompt_key: str = "prompt",
    reference_key: str = "reference",
    check: Callable[[PromptRecord], str | None] | None = None,
) -> list[PromptRecord]:
    """Read JSONL records; a malformed line, or one `check` objects to, is an error naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise SealignError(f"data file {str(path)!r} does not exist or is not a file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise SealignError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    records = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SealignError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise SealignError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        for key in (prompt_key, reference_key):
            if key not in row:
                raise SealignError(f"{path}:{lineno}: missing field {key!r}")
            if not isinstance(row[key], str):
                raise SealignError(f"{path}:{lineno}: field {key!r} must be a string")
        record = PromptRecord(prompt=row[prompt_key], reference=row[reference_key])
        problem = check(record) if check else None
        if problem:
            raise SealignError(f"{path}:{lineno}: {problem}")
        records.append(record)
    if not records:
        raise SealignError(f"{path}: no records")
    return records
