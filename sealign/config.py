"""Typed configs: one place for defaults, validated as soon as they are built.

Field docstrings live in `metadata["help"]`, which `HfArgumentParser` turns into `--help`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Optional

from sealign.errors import SealignError


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise SealignError(message)


def config_hash(*parts: Any, length: int = 12) -> str:
    """A stable short hash of dataclass configs and plain dicts, used to key caches."""
    blob = json.dumps([dataclasses.asdict(p) if dataclasses.is_dataclass(p) else p for p in parts], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


@dataclass
class TaskConfig:
    """Which built-in task, and the seed of its hidden preferences and data."""

    task: str = field(default="keywords", metadata=_help("built-in task name"))
    task_seed: int = field(default=0, metadata=_help("seed of the task's hidden reward and its data splits"))
    n_train: int = field(default=50_000, metadata=_help("number of training prompts"))
    n_holdout: int = field(default=500, metadata=_help("number of held-out evaluation prompts"))

    def __post_init__(self) -> None:
        from sealign.tasks import TASKS

        _require(self.task in TASKS, f"unknown task {self.task!r} (known: {', '.join(sorted(TASKS))})")
        _require(self.n_train > 0, f"--n-train must be positive, got {self.n_train}")
        _require(self.n_holdout > 0, f"--n-holdout must be positive, got {self.n_holdout}")


# Built-in policy sizes (GPT-2 architecture): name -> (n_embd, n_layer, n_head).
POLICY_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (128, 4, 4),  # ~0.9M parameters
    "small": (256, 5, 8),  # ~4M
    "base": (384, 8, 8),  # ~14M
}


@dataclass
class PolicyConfig:
    """Architecture of the built-in reference policy (a transformers GPT-2)."""

    size: str = field(default="tiny", metadata=_help("built-in policy size", choices=sorted(POLICY_SIZES)))

    def __post_init__(self) -> None:
        _require(self.size in POLICY_SIZES, f"unknown policy size {self.size!r} (known: {', '.join(POLICY_SIZES)})")

    @property
    def dims(self) -> tuple[int, int, int]:
        return POLICY_SIZES[self.size]


@dataclass
class SFTConfig:
    """Supervised fine-tuning of pi_ref on the task's imperfect demonstrations."""

    sft_steps: int = field(default=4000, metadata=_help("optimizer steps"))
    sft_batch_size: int = field(default=32, metadata=_help("demonstrations per step"))
    sft_lr: float = field(default=1e-3, metadata=_help("peak AdamW learning rate (cosine schedule)"))
    sft_warmup: int = field(default=100, metadata=_help("linear warm-up steps"))
    sft_seed: int = field(default=0, metadata=_help("seed of initialisation and demonstration sampling"))

    def __post_init__(self) -> None:
        _require(self.sft_steps > 0, f"--sft-steps must be positive, got {self.sft_steps}")
        _require(self.sft_batch_size > 0, f"--sft-batch-size must be positive, got {self.sft_batch_size}")
        _require(self.sft_lr > 0, f"--sft-lr must be positive, got {self.sft_lr}")
        _require(0 <= self.sft_warmup < self.sft_steps, f"--sft-warmup must be in [0, sft_steps), got {self.sft_warmup}")


@dataclass
class OracleConfig:
    """How the preference oracle turns P(a > b) into labels (paper §2.1, Eq. 3)."""

    oracle_temperature: float = field(
        default=0.2, metadata=_help("Bradley-Terry temperature tau: P(a>b) = sigmoid((r(a) - r(b)) / tau)")
    )
    label_mode: str = field(
        default="argmax",
        metadata=_help("argmax: the more likely answer; bernoulli: a noisy human, z ~ Ber(P)", choices=["argmax", "bernoulli"]),
    )
    flip_prob: float = field(default=0.0, metadata=_help("probability that a label is flipped (annotator error)"))
    oracle_seed: int = field(default=0, metadata=_help("seed of the oracle's label noise and tie breaks"))

    def __post_init__(self) -> None:
        _require(self.oracle_temperature > 0, f"--oracle-temperature must be positive, got {self.oracle_temperature}")
        _require(self.label_mode in ("argmax", "bernoulli"), f"unknown label mode {self.label_mode!r} (known: argmax, bernoulli)")
        _require(0.0 <= self.flip_prob < 0.5, f"--flip-prob must be in [0, 0.5), got {self.flip_prob}")


@dataclass
class EvalConfig:
    """Win rate against the references on held-out prompts (paper §5.2, Metrics)."""

    sample: bool = field(default=False, metadata=_help("sample instead of greedy decoding"))
    temperature: float = field(default=0.7, metadata=_help("sampling temperature when sampling"))
    best_of: int = field(
        default=1, metadata=_help("best-of-N: sample N responses and keep the one the oracle's reward ranks first")
    )
    eval_batch_size: int = field(default=256, metadata=_help("prompts generated at once"))
    eval_seed: int = field(default=0, metadata=_help("seed of sampled evaluation"))

    def __post_init__(self) -> None:
        _require(self.temperature > 0, f"--temperature must be positive, got {self.temperature}")
        _require(self.best_of >= 1, f"--best-of must be at least 1, got {self.best_of}")
        _require(self.eval_batch_size >= 1, f"--eval-batch-size must be at least 1, got {self.eval_batch_size}")


LR_SCHEDULES = ("cosine", "constant", "linear", "constant_with_warmup")


@dataclass
class TrainConfig:
    """One alignment run: agent, DAP loss, query budget and the loop's knobs (paper §5.2)."""

    agent: str = field(default="online", metadata=_help("agent recipe: online, offline"))
    loss: str = field(default="dpo", metadata=_help("direct optimizer F of Eq. 8: dpo, ipo, slic, simpo"))
    beta: Optional[float] = field(
        default=None, metadata=_help("loss temperature beta; default 0.1 (dpo), 0.2 (slic), 2.0 (simpo); required for ipo")
    )
    budget: int = field(default=5000, metadata=_help("oracle queries (labelled training pairs) to spend"))
    batch_size: int = field(default=32, metadata=_help("prompts (pairs) per step"))
    num_candidates: int = field(default=2, metadata=_help("M: responses sampled per prompt"))
    train_temperature: float = field(default=0.7, metadata=_help("sampling temperature of the actor"))
    lr: float = field(default=2e-4, metadata=_help("peak learning rate (AdamW)"))
    lr_schedule: str = field(default="cosine", metadata=_help("learning-rate schedule", choices=list(LR_SCHEDULES)))
    warmup_ratio: float = field(default=0.03, metadata=_help("share of the learner steps spent on linear warm-up"))
    max_grad_norm: float = field(default=1.0, metadata=_help("gradient clipping"))
    label_smoothing: float = field(default=0.0, metadata=_help("dpo only: conservative DPO's epsilon"))
    sync_every: int = field(default=1, metadata=_help("actor <- learner weights every k steps (1 = online, k > 1 = iterative)"))
    eval_every: int = field(default=500, metadata=_help("evaluate every this many queries"))
    checkpoint_every: int = field(default=1000, metadata=_help("checkpoint every this many queries"))
    seed: int = field(default=0, metadata=_help("seed of prompts, sampling and selection"))
    out: Optional[str] = field(default=None, metadata=_help("run folder (must not exist unless --resume)"))
    resume: Optional[str] = field(default=None, metadata=_help("continue the run in this folder"))
    deterministic: bool = field(default=False, metadata=_help("torch deterministic algorithms (bit-exact resume)"))

    def __post_init__(self) -> None:
        from sealign.agents import AGENTS
        from sealign.losses import resolve_beta

        _require(self.agent in AGENTS, f"unknown agent {self.agent!r} (known: {', '.join(AGENTS)})")
        self.beta = resolve_beta(self.loss, self.beta)  # unknown loss, missing or non-positive beta
        _require(self.budget > 0, f"--budget must be positive, got {self.budget}")
        _require(self.batch_size > 0, f"--batch-size must be positive, got {self.batch_size}")
        _require(self.batch_size <= self.budget, f"--batch-size ({self.batch_size}) exceeds --budget ({self.budget})")
        _require(self.num_candidates >= 2, f"--num-candidates must be at least 2 (a duel), got {self.num_candidates}")
        _require(self.train_temperature > 0, f"--train-temperature must be positive, got {self.train_temperature}")
        _require(self.lr > 0, f"--lr must be positive, got {self.lr}")
        _require(0.0 <= self.warmup_ratio < 1.0, f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        _require(self.sync_every >= 1, f"--sync-every must be >= 1, got {self.sync_every}")
        _require(self.eval_every > 0, f"--eval-every must be positive, got {self.eval_every}")
        _require(self.checkpoint_every > 0, f"--checkpoint-every must be positive, got {self.checkpoint_every}")
        _require(0.0 <= self.label_smoothing < 0.5, f"--label-smoothing must be in [0, 0.5), got {self.label_smoothing}")
        _require(self.label_smoothing == 0.0 or self.loss == "dpo", "--label-smoothing applies to --loss dpo only")
        _require((self.out is None) != (self.resume is None), "give exactly one of --out (new run) or --resume (existing run)")

    @property
    def total_steps(self) -> int:
        """Learner updates: one per batch of the budget, for online and offline agents alike."""
        return -(-self.budget // self.batch_size)

    @property
    def warmup_steps(self) -> int:
        return int(self.warmup_ratio * self.total_steps)
