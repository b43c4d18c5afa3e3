"""Supervised fine-tuning of the reference policy pi_ref, cached by a hash of everything it depends on.

The paper starts every agent from an SFT model (§5.2); on the built-in task we make one by
fitting a small GPT-2 to the task's imperfect demonstrations.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from transformers import get_cosine_schedule_with_warmup

from sealign.config import PolicyConfig, SFTConfig, TaskConfig, config_hash
from sealign.policy import build_policy, encode_pairs, num_parameters
from sealign.progress import progress_bar
from sealign.tasks import TASKS, make_task

SFT_FORMAT = 1  # bump when the SFT recipe changes, so old caches are not reused
META_FILE = "sft.json"
# Every build trains on this many threads, whatever the caller set: float sums are split by the
# thread count, so 1 and 2 threads gave other weights after 30 steps. One CPU kind, one result.
BUILD_THREADS = 2


def cache_root() -> Path:
    """Where built reference policies live: $SEALIGN_HOME, else ~/.cache/sealign."""
    return Path(os.environ.get("SEALIGN_HOME", Path.home() / ".cache" / "sealign"))


def reference_dir(task_cfg: TaskConfig, policy_cfg: PolicyConfig, sft_cfg: SFTConfig) -> Path:
    """The cache folder of pi_ref, keyed by task, model and training config (not the holdout size)."""
    key = {
        "task": task_cfg.task,
        "task_version": TASKS[task_cfg.task].version,
        "task_seed": task_cfg.task_seed,
        "n_train": task_cfg.n_train,
        "format": SFT_FORMAT,
    }
    digest = config_hash(key, policy_cfg, sft_cfg)
    return cache_root() / "ref" / f"{task_cfg.task}-{policy_cfg.size}-{digest}"


@dataclass
class CachedModel:
    path: Path
    reused: bool
    meta: dict
    prebuilt: bool = False  # copied from the package's checksummed copy (sealign.prebuilt)


def weights_fingerprint(path: Path) -> str:
    """A short hash of a saved model's weight files, so a run can tell if its pi_ref changed."""
    digest = hashlib.sha256()
    for f in sorted(Path(path).glob("*.safetensors")) or sorted(Path(path).glob("*.bin")):
        digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def sft_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over response tokens (prompt and padding masked)."""
    labels = batch["input_ids"].masked_fill(~batch["response_mask"], -100)
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss


def train_sft(task_cfg: TaskConfig, policy_cfg: PolicyConfig, sft_cfg: SFTConfig, *, progress: bool = True):
    """Fit pi_ref to the task's demonstrations; returns (model, tokenizer, per-step losses)."""
    task = make_task(task_cfg)
    torch.manual_seed(sft_cfg.sft_seed)
    rng = np.random.default_rng(sft_cfg.sft_seed)
    tokenizer = task.build_tokenizer()
    model = build_policy(policy_cfg, tokenizer)
    model.train()
    prompts = [r.prompt for r in task.records("train")]
    optimizer = torch.optim.AdamW(model.parameters(), lr=sft_cfg.sft_lr, betas=(0.9, 0.95), weight_decay=0.01)
    scheduler = get_cosine_schedule_with_warmup(optimizer, sft_cfg.sft_warmup, sft_cfg.sft_steps)
    losses: list[float] = []
    with progress_bar(progress) as bar:
        job = bar.add_task("SFT pi_ref", total=sft_cfg.sft_steps, info="")
        for step in range(sft_cfg.sft_steps):
            batch_prompts = [prompts[i] for i in rng.integers(len(prompts), size=sft_cfg.sft_batch_size)]
            demos = [task.demonstration(p, rng) for p in batch_prompts]
            loss = sft_loss(model, encode_pairs(tokenizer, batch_prompts, demos))
            clipped_step(model, optimizer, scheduler, loss)
            losses.append(loss.item())
            bar.update(job, advance=1, info=f"loss {np.mean(losses[-20:]):.3f}")
    model.eval()
    return model, tokenizer, losses


def ensure_reference(
    task_cfg: TaskConfig, policy_cfg: PolicyConfig, sft_cfg: SFTConfig, *, progress: bool = True
) -> CachedModel:
    """Return the cached pi_ref for these configs, training and saving it first if absent."""

    def build():
        model, tokenizer, losses = train_sft(task_cfg, policy_cfg, sft_cfg, progress=progress)
        return model, tokenizer, losses, {"task": asdict(task_cfg), "policy": asdict(policy_cfg), "sft": asdict(sft_cfg)}

    return cached_model(reference_dir(task_cfg, policy_cfg, sft_cfg), build)


def cached_model(final: Path, build: Callable[[], tuple]) -> CachedModel:
    """The model cached at `final`, else the package's prebuilt copy of it, else the one `build()`
    trains — (model, tokenizer, per-step losses, its settings and figures) — saved there first
    with its meta (sft.json)."""
    from sealign import prebuilt

    if (final / META_FILE).is_file():
        return CachedModel(final, True, json.loads((final / META_FILE).read_text()))
    if prebuilt.install(final):
        return CachedModel(final, True, json.loads((final / META_FILE).read_text()), prebuilt=True)
    start = time.time()
    with build_threads(BUILD_THREADS):
        model, tokenizer, losses, facts = build()
    window = max(1, min(50, len(losses) // 10))
    meta = {
        **facts,
        "parameters": num_parameters(model),
        "loss_first": float(np.mean(losses[:window])),
        "loss_last": float(np.mean(losses[-window:])),
        "losses": losses[::10],
        "seconds": round(time.time() - start, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    save_to_cache(model, tokenizer, meta, final)
    return CachedModel(final, False, meta)


@contextmanager
def build_threads(n: int):
    """Run the block on `n` torch threads, then give the caller back its own count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def clipped_step(model: torch.nn.Module, optimizer, scheduler, loss: torch.Tensor) -> None:
    """One optimizer step on `loss` with gradients clipped to norm 1, then the schedule's."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()


def save_to_cache(model, tokenizer, meta: dict, final: Path) -> None:
    """Write a model folder with its `sft.json`-style meta into place at once (`write_folder`)."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))

    write_folder(final, write)


def write_folder(final: Path, write: Callable[[Path], None]) -> None:
    """Let `write` fill a private folder, then rename it to `final`, so a crash never leaves a
    half cache and two builders never mix their files."""
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, final)
    except OSError:  # another process finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
