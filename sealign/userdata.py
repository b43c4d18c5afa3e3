"""User prompts and references: a local JSONL / CSV / Parquet file or a datasets-hub dataset,
split into the prompts the agent learns on and the prompts it is evaluated on (paper §5.2).

Prompts longer than `max_prompt_tokens` are dropped and counted, never truncated: a cut
prompt asks a different question, and its reference no longer answers it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from sealign.config import DataConfig
from sealign.data import PromptRecord, read_records, records_from_rows
from sealign.errors import SealignError
from sealign.policy import prompt_lengths
from sealign.sft import cache_root

Check = Optional[Callable[[PromptRecord], Optional[str]]]
FILE_BUILDERS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "json", ".json": "json"}


@dataclass
class UserData:
    train: list[PromptRecord]
    eval: list[PromptRecord]
    skipped_long: int = 0  # prompts dropped for exceeding max_prompt_tokens, both splits together


def load_splits(source: str, cfg: DataConfig, check: Check = None) -> dict[str, list[PromptRecord]]:
    """Every split of `source` as records. A local file is one split, `train`; JSONL keeps
    sealign's own reader, whose errors name the line."""
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".jsonl":
        return {"train": read_records(path, cfg.prompt_key, cfg.reference_key, check)}
    import datasets

    datasets.disable_progress_bars()
    try:
        if path.is_file():
            if path.suffix not in FILE_BUILDERS:
                raise SealignError(f"{source}: unknown data format (known: {', '.join(FILE_BUILDERS)})")
            loaded = datasets.load_dataset(FILE_BUILDERS[path.suffix], data_files={"train": str(path)})
        else:
            loaded = datasets.load_dataset(source)
    except SealignError:
        raise
    except Exception as e:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ...)
        raise SealignError(f"cannot load data {source!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    splits = {
        name: records_from_rows(((f"{source} [{name}]: row {i}", row) for i, row in enumerate(split)), cfg.prompt_key, cfg.reference_key, check)
        for name, split in loaded.items()
    }
    for name, records in splits.items():
        if not records:
            raise SealignError(f"{source} [{name}]: no records")
    return splits


def load_user_data(cfg: DataConfig, check: Check = None) -> UserData:
    """Training and evaluation records of --data (and --eval-data). Without an evaluation split,
    `eval_size` records are held out of the training split by a fixed shuffle."""
    if cfg.data is None:
        raise ValueError("load_user_data needs --data")
    splits = load_splits(cfg.data, cfg, check)
    if cfg.train_split not in splits:
        raise SealignError(f"{cfg.data}: no split {cfg.train_split!r} (has: {', '.join(splits)})")
    train = splits[cfg.train_split]
    if cfg.eval_data is not None:
        eval_splits = load_splits(cfg.eval_data, cfg, check)
        evaluation = eval_splits.get(cfg.eval_split) or eval_splits.get("train") or next(iter(eval_splits.values()))
    elif cfg.eval_split in splits and cfg.eval_split != cfg.train_split:
        evaluation = splits[cfg.eval_split]
    else:
        if len(train) <= cfg.eval_size:
            raise SealignError(
                f"{cfg.data}: {len(train)} records cannot spare --eval-size {cfg.eval_size} for evaluation "
                "(lower --eval-size or give --eval-data)"
            )
        order = np.random.default_rng(0).permutation(len(train))
        held = set(order[: cfg.eval_size].tolist())
        evaluation = [train[i] for i in sorted(held)]
        train = [r for i, r in enumerate(train) if i not in held]
    return UserData(train=train[: cfg.max_train], eval=evaluation[: cfg.eval_size])


def drop_long(
    records: list[PromptRecord], tokenizer: PreTrainedTokenizerBase, limit: Optional[int]
) -> tuple[list[PromptRecord], int, int]:
    """The records whose prompt fits in `limit` policy tokens, how many did not, and the longest
    kept prompt's length. Dropping every record is an error."""
    lengths = prompt_lengths(tokenizer, [r.prompt for r in records])
    kept = [(r, n) for r, n in zip(records, lengths) if limit is None or n <= limit]
    if not kept:
        raise SealignError(f"all {len(records)} prompts of a split are longer than --max-prompt-tokens {limit}")
    return [r for r, _ in kept], len(records) - len(kept), max(n for _, n in kept)


def evaluation_records(cfg: DataConfig, check: Check = None) -> list[PromptRecord]:
    """What `sealign eval --data` judges: --eval-data, else the eval split of --data, else all of
    --data; at most `eval_size` records, each with a reference."""
    if cfg.data is None:
        raise ValueError("evaluation_records needs --data")

    def with_reference(record: PromptRecord) -> Optional[str]:
        if record.reference is None:
            return "no reference (sealign eval measures the win rate against one)"
        return check(record) if check else None

    splits = load_splits(cfg.eval_data or cfg.data, cfg, with_reference)
    records = splits.get(cfg.eval_split) or splits.get(cfg.train_split) or next(iter(splits.values()))
    return records[: cfg.eval_size]


def stage_rows(rows: Iterable[dict]) -> str:
    """A `datasets.Dataset` (or any rows) given from Python, written once as JSONL under
    $SEALIGN_HOME/data/ keyed by its content, so that config.json can name it and a resume
    reads the same rows."""
    lines = "".join(json.dumps(dict(row), ensure_ascii=False, sort_keys=True, default=str) + "\n" for row in rows)
    if not lines:
        raise SealignError("the dataset given has no rows")
    path = cache_root() / "data" / f"{hashlib.sha256(lines.encode()).hexdigest()[:16]}.jsonl"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(lines, encoding="utf-8")
        os.replace(tmp, path)
    return str(path)
