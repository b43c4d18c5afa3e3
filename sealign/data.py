"""Prompt records and their JSONL form, shared by built-in tasks and user data."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from sealign.errors import SealignError


@dataclass(frozen=True)
class PromptRecord:
    """A prompt x and the reference response the win rate is measured against (§5.2). The
    reference is needed only to evaluate: prompt-only data trains without one."""

    prompt: str
    reference: Optional[str] = None


# A chat-format prompt (a list of {role, content} messages, as TRL's conversational datasets
# hold them) travels through the loop, the ledger and the oracles as one string: its canonical
# JSON. The policy reads it through its tokenizer's chat template, a reward model through its
# own, a judge or a person as a transcript.
_CHAT_START = '[{"role": '


def conversation(messages: list[dict]) -> str:
    """The string that stands for a chat-format prompt."""
    return json.dumps([{"role": m["role"], "content": m["content"]} for m in messages], ensure_ascii=False)


def messages_of(prompt: str) -> Optional[list[dict]]:
    """The messages of a chat-format prompt, or None for a plain one."""
    if not prompt.startswith(_CHAT_START):
        return None
    try:
        messages = json.loads(prompt)
    except json.JSONDecodeError:
        return None
    return messages if _is_messages(messages) else None


def prompt_text(prompt: str) -> str:
    """What a person or a judge is shown: a chat prompt as a transcript, a plain one as it is."""
    messages = messages_of(prompt)
    return prompt if messages is None else "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _is_messages(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)
    )


def record_from_row(row: Any, prompt_key: str = "prompt", reference_key: str = "reference") -> PromptRecord:
    """A record from one row of user data; raises ValueError saying what is wrong with it.

    The prompt is a string or a list of {role, content} messages; the reference (optional) a
    string or a list holding one assistant message, as a conversational completion is."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    if prompt_key not in row:
        raise ValueError(f"missing field {prompt_key!r} (choose with --prompt-key)")
    prompt = row[prompt_key]
    if _is_messages(prompt):
        prompt = conversation(prompt)
    elif not isinstance(prompt, str):
        raise ValueError(f"field {prompt_key!r} must be a string or a list of {{role, content}} messages")
    reference = row.get(reference_key)
    if _is_messages(reference) and len(reference) == 1:
        reference = reference[0]["content"]
    if reference is not None and not isinstance(reference, str):
        raise ValueError(f"field {reference_key!r} must be a string (or one assistant message)")
    return PromptRecord(prompt=prompt, reference=reference)


def write_records(path: str | Path, records: Iterable[PromptRecord]) -> int:
    """Write records as JSONL (`{"prompt": ..., "reference": ...}` per line); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            row = asdict(record)
            messages = messages_of(record.prompt)
            f.write(json.dumps({**row, "prompt": messages if messages is not None else record.prompt}, ensure_ascii=False) + "\n")
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
    rows = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append((f"{path}:{lineno}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise SealignError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    if not rows:
        raise SealignError(f"{path}: no records")
    return records_from_rows(rows, prompt_key, reference_key, check)


def records_from_rows(
    rows: Iterable[tuple[str, Any]], prompt_key: str, reference_key: str, check: Callable[[PromptRecord], str | None] | None = None
) -> list[PromptRecord]:
    """Records from (where, row) pairs; the first bad row is one error naming where it is."""
    records = []
    for where, row in rows:
        try:
            record = record_from_row(row, prompt_key, reference_key)
        except ValueError as e:
            raise SealignError(f"{where}: {e}") from None
        problem = check(record) if check else None
        if problem:
            raise SealignError(f"{where}: {problem}")
        records.append(record)
    return records
