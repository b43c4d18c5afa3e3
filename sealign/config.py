"""Typed configs: one place for defaults, validated as soon as they are built.

Field docstrings live in `metadata["help"]`, which `HfArgumentParser` turns into `--help`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

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

    _argument_group_name: ClassVar[str] = "task"

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
    "nano": (32, 4, 4),  # ~0.06M parameters
    "micro": (64, 4, 4),  # ~0.23M parameters
    "tiny": (128, 4, 4),  # ~0.9M parameters
    "small": (256, 5, 8),  # ~4M
    "base": (384, 8, 8),  # ~14M
}


@dataclass
class PolicyConfig:
    """Architecture of the built-in reference policy (a transformers GPT-2)."""

    _argument_group_name: ClassVar[str] = "policy (built-in pi_ref)"

    size: str = field(default="tiny", metadata=_help("built-in policy size", choices=sorted(POLICY_SIZES)))

    def __post_init__(self) -> None:
        _require(self.size in POLICY_SIZES, f"unknown policy size {self.size!r} (known: {', '.join(POLICY_SIZES)})")

    @property
    def dims(self) -> tuple[int, int, int]:
        return POLICY_SIZES[self.size]


@dataclass
class SFTConfig:
    """Supervised fine-tuning of pi_ref on the task's imperfect demonstrations."""

    _argument_group_name: ClassVar[str] = "SFT of the built-in pi_ref"

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
class PreferenceModelConfig:
    """The built-in task's pretrained preference model (the paper's PairRM): a small transformers
    reward model fitted by Bradley-Terry to the task's public judge, never to the oracle."""

    _argument_group_name: ClassVar[str] = "preference model (built-in task)"

    pm_steps: int = field(default=1500, metadata=_help("optimizer steps"))
    pm_batch_size: int = field(default=64, metadata=_help("judged pairs per step"))
    pm_lr: float = field(default=5e-3, metadata=_help("peak AdamW learning rate (cosine schedule)"))
    pm_seed: int = field(default=0, metadata=_help("seed of initialisation and of the pretraining pairs"))

    def __post_init__(self) -> None:
        _require(self.pm_steps > 0, f"--pm-steps must be positive, got {self.pm_steps}")
        _require(self.pm_batch_size > 0, f"--pm-batch-size must be positive, got {self.pm_batch_size}")
        _require(self.pm_lr > 0, f"--pm-lr must be positive, got {self.pm_lr}")


ORACLE_KINDS = ("task", "rm:MODEL", "judge:MODEL", "http://HOST:PORT", "human")
DTYPES = ("float32", "bfloat16", "float16")
ACTORS = ("transformers", "vllm")  # --actor: sealign.actor.Actor, sealign.vllm_actor.VLLMActor


def oracle_kind(spec: str, flag: str = "--oracle") -> tuple[str, str]:
    """Split an --oracle spec into (kind, target): task, rm, judge or remote (a URL)."""
    if spec in ("task", "human"):
        return spec, ""
    if spec.startswith(("http://", "https://")):
        return "remote", spec.rstrip("/")
    kind, sep, target = spec.partition(":")
    if not sep or kind not in ("rm", "judge") or not target:
        known = ", ".join(ORACLE_KINDS + (("pm",) if flag == "--train-oracle" else ()))
        raise SealignError(f"unknown {flag} {spec!r} (known: {known})")
    return kind, target


def _check_device(device: str, flag: str) -> None:
    import torch

    _require(device == "cpu" or device.startswith(("cuda", "mps")), f"unknown {flag} {device!r} (known: cpu, cuda, cuda:N, mps)")
    _require(not device.startswith("cuda") or torch.cuda.is_available(), f"{flag} {device}: no CUDA device is available")


@dataclass
class OracleConfig:
    """Who answers "which response is better?" and how P(a > b) becomes a label (paper §2.1, Eq. 3)."""

    _argument_group_name: ClassVar[str] = "oracle"

    oracle: str = field(
        default="task",
        metadata=_help(
            "task: the built-in task's hidden reward; rm:MODEL: a sequence-classification reward model (hub name or "
            "folder); judge:MODEL: an LLM judge behind an OpenAI-compatible API; http://HOST:PORT: a `sealign serve-oracle`; "
            "human: people, on a labelling web page (the task's reward judges the evaluation)"
        ),
    )
    oracle_temperature: Optional[float] = field(
        default=None,
        metadata=_help("Bradley-Terry temperature tau: P(a>b) = sigmoid((r(a) - r(b)) / tau); default 0.2 (task), 1 (rm)"),
    )
    label_mode: str = field(
        default="argmax",
        metadata=_help("argmax: the more likely answer; bernoulli: a noisy human, z ~ Ber(P)", choices=["argmax", "bernoulli"]),
    )
    flip_prob: float = field(default=0.0, metadata=_help("probability that a label is flipped (annotator error)"))
    train_oracle: Optional[str] = field(
        default=None,
        metadata=_help(
            "who labels the training duels, if not --oracle (which always judges the evaluation): any --oracle spec, "
            "or pm: the built-in task's pretrained preference model (labels from the prior alone)"
        ),
    )
    oracle_seed: int = field(default=0, metadata=_help("seed of the oracle's label noise, tie breaks and judge positions"))
    oracle_batch_size: int = field(default=32, metadata=_help("rm: responses scored at once"))
    oracle_device: str = field(default="cpu", metadata=_help("rm: device of the reward model (cpu, cuda, cuda:N)"))
    oracle_dtype: str = field(default="float32", metadata=_help("rm: dtype of the reward model", choices=list(DTYPES)))
    rm_chat_template: bool = field(
        default=True, metadata=_help("rm: score (prompt, response) through the reward model tokenizer's chat template when it has one")
    )
    judge_base_url: str = field(default="https://api.openai.com/v1", metadata=_help("judge: OpenAI-compatible API root"))
    judge_key_env: str = field(
        default="OPENAI_API_KEY", metadata=_help("judge: environment variable holding the API key (never logged or saved)")
    )
    judge_template: Optional[str] = field(
        default=None, metadata=_help("judge: text file with the prompt template ({prompt}, {first}, {second}); default built in")
    )
    judge_concurrency: int = field(default=8, metadata=_help("judge: requests in flight at once"))
    judge_parse_retries: int = field(default=2, metadata=_help("judge: new tries for an answer that names neither response"))
    oracle_token_env: str = field(
        default="SEALIGN_ORACLE_TOKEN", metadata=_help("remote: environment variable holding the bearer token, if the server wants one")
    )
    label_host: str = field(default="127.0.0.1", metadata=_help("human: address of the labelling page (another needs a token)"))
    label_port: int = field(default=8765, metadata=_help("human: TCP port of the labelling page"))
    label_token_env: str = field(
        default="SEALIGN_LABEL_TOKEN", metadata=_help("human: environment variable holding the labellers' token (required off 127.0.0.1)")
    )
    label_timeout: float = field(default=120.0, metadata=_help("human: seconds a duel stays with one person before it is offered again"))
    oracle_timeout: float = field(default=60.0, metadata=_help("judge, remote: seconds before a request is abandoned and retried"))
    oracle_retries: int = field(default=6, metadata=_help("judge, remote: retries (exponential backoff) on timeouts, 429 and 5xx"))
    oracle_backoff: float = field(default=0.5, metadata=_help("remote: seconds before the first retry; doubles each time (a judge backs off as the openai SDK does)"))

    def __post_init__(self) -> None:
        kind, _ = oracle_kind(self.oracle)
        if self.train_oracle not in (None, "pm"):
            oracle_kind(self.train_oracle, "--train-oracle")  # an unknown spec fails here, before any work
        if self.oracle_temperature is None and kind in ("task", "rm"):
            self.oracle_temperature = 0.2 if kind == "task" else 1.0
        _require(
            self.oracle_temperature is None or kind in ("task", "rm"),
            f"--oracle-temperature applies to task and rm oracles, not {kind} (a served oracle sets it on the server)",
        )
        _require(self.oracle_temperature is None or self.oracle_temperature > 0, f"--oracle-temperature must be positive, got {self.oracle_temperature}")
        _require(self.label_mode in ("argmax", "bernoulli"), f"unknown label mode {self.label_mode!r} (known: argmax, bernoulli)")
        _require(0.0 <= self.flip_prob < 0.5, f"--flip-prob must be in [0, 0.5), got {self.flip_prob}")
        _require(self.oracle_batch_size > 0, f"--oracle-batch-size must be positive, got {self.oracle_batch_size}")
        _require(self.oracle_dtype in DTYPES, f"unknown --oracle-dtype {self.oracle_dtype!r} (known: {', '.join(DTYPES)})")
        if kind == "rm":
            _check_device(self.oracle_device, "--oracle-device")
            _check_source("--oracle rm:", oracle_kind(self.oracle)[1])
        _require(0 < self.label_port < 65536, f"--label-port must be in 1..65535, got {self.label_port}")
        _require(self.label_timeout > 0, f"--label-timeout must be positive, got {self.label_timeout}")
        _require(kind != "human" or self.train_oracle is None, "--oracle human: people label the training duels; drop --train-oracle")
        _require(self.judge_concurrency > 0, f"--judge-concurrency must be positive, got {self.judge_concurrency}")
        _require(self.judge_parse_retries >= 0, f"--judge-parse-retries must be >= 0, got {self.judge_parse_retries}")
        _require(self.oracle_timeout > 0, f"--oracle-timeout must be positive, got {self.oracle_timeout}")
        _require(self.oracle_retries >= 0, f"--oracle-retries must be >= 0, got {self.oracle_retries}")
        _require(self.oracle_backoff >= 0, f"--oracle-backoff must be >= 0, got {self.oracle_backoff}")
        _require(
            self.judge_template is None or Path(self.judge_template).is_file(),
            f"--judge-template {self.judge_template!r} does not exist or is not a file",
        )

    @property
    def kind(self) -> str:
        return oracle_kind(self.oracle)[0]

    @property
    def target(self) -> str:
        return oracle_kind(self.oracle)[1]


def _is_local(name: str) -> bool:
    """A name that can only mean a local path: absolute, starting with '.' or '~', or not a valid
    hub id (`owner/name` at most, no '..' or spaces), so it is never sent to the hub."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if Path(name).is_absolute() or name.startswith((".", "~")):
        return True
    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


def _check_source(flag: str, name: Optional[str], *, data: bool = False) -> None:
    """A model or dataset named by path must exist; a hub name is looked up only when loaded.
    For data, a file name (.jsonl, .csv, ...) is a path too."""
    if name is None or Path(name).expanduser().exists():
        return
    local = _is_local(name) or (data and Path(name).suffix.lower() in (".jsonl", ".json", ".csv", ".parquet"))
    _require(not local, f"{flag} {name!r}: no such file or folder (and not a hub name)")


@dataclass
class ModelConfig:
    """Which policy to align: any transformers causal LM (paper §5.2 uses Pythia TL;DR SFT models)."""

    _argument_group_name: ClassVar[str] = "model (your own policy)"

    policy: Optional[str] = field(
        default=None, metadata=_help("causal LM to align (hub name or folder); default: the built-in task's SFT pi_ref")
    )
    ref: Optional[str] = field(default=None, metadata=_help("frozen reference pi_ref (hub name or folder); default: the initial policy"))
    device: str = field(default="cpu", metadata=_help("device of the policy: cpu, cuda, cuda:N, mps"))
    dtype: str = field(default="float32", metadata=_help("dtype of the policy weights", choices=list(DTYPES)))
    chat_template: bool = field(
        default=False, metadata=_help("wrap each prompt in the policy tokenizer's chat template (as a user turn)")
    )
    max_new_tokens: Optional[int] = field(default=None, metadata=_help("response length limit; default: the task's (12)"))
    lora_r: int = field(default=0, metadata=_help("LoRA rank (needs peft: pip install 'sealign[lora]'); 0 trains every weight"))
    lora_alpha: float = field(default=16.0, metadata=_help("LoRA scaling alpha"))
    generation_batch_size: Optional[int] = field(
        default=None, metadata=_help("sequences (prompts x candidates) the actor samples at once, which bounds its key/value cache; default: 256 prompts")
    )
    memory_check: bool = field(
        default=True, metadata=_help("estimate the peak memory on --device before the run and refuse one that cannot fit")
    )
    actor: str = field(
        default="transformers",
        metadata=_help("what samples pi_theta's candidates: transformers' generate, or vllm (a GPU; pip install 'sealign[vllm]')", choices=list(ACTORS)),
    )
    actor_memory: float = field(default=0.3, metadata=_help("--actor vllm: share of the GPU's memory its engine takes for weights and cache"))

    def __post_init__(self) -> None:
        _check_source("--policy", self.policy)
        _check_source("--ref", self.ref)
        _require(self.dtype in DTYPES, f"unknown --dtype {self.dtype!r} (known: {', '.join(DTYPES)})")
        _check_device(self.device, "--device")
        _require(self.max_new_tokens is None or self.max_new_tokens > 0, f"--max-new-tokens must be positive, got {self.max_new_tokens}")
        _require(self.lora_r >= 0, f"--lora-r must be >= 0, got {self.lora_r}")
        _require(
            self.generation_batch_size is None or self.generation_batch_size > 0,
            f"--generation-batch-size must be positive, got {self.generation_batch_size}",
        )
        _require(self.lora_r == 0 or self.policy is not None, "--lora-r needs --policy")
        if self.lora_r:
            _require(importlib.util.find_spec("peft") is not None, "--lora-r needs peft: pip install 'sealign[lora]'")
        _require(self.actor in ACTORS, f"unknown --actor {self.actor!r} (known: {', '.join(ACTORS)})")
        _require(0 < self.actor_memory < 1, f"--actor-memory must be in (0, 1), got {self.actor_memory}")
        if self.actor == "vllm":
            _require(self.device.startswith("cuda"), f"--actor vllm needs a GPU: --device cuda (got {self.device!r})")
            # the adapters would have to be merged into the engine's weights at every push
            _require(self.lora_r == 0, "--actor vllm does not take --lora-r yet: train every weight, or use --actor transformers")
            _require(importlib.util.find_spec("vllm") is not None, "--actor vllm needs vLLM, which is not installed: pip install 'sealign[vllm]'")


@dataclass
class DataConfig:
    """Prompts and references: the task's, or a user's file or datasets-hub dataset (paper §5.2: TL;DR)."""

    _argument_group_name: ClassVar[str] = "data"

    data: Optional[str] = field(
        default=None, metadata=_help("prompts + references: a .jsonl/.csv/.parquet file or a datasets-hub name; default: the task's")
    )
    eval_data: Optional[str] = field(default=None, metadata=_help("a separate file or hub name for the evaluation prompts"))
    prompt_key: str = field(default="prompt", metadata=_help("field holding the prompt"))
    reference_key: str = field(default="reference", metadata=_help("field holding the reference response"))
    train_split: str = field(default="train", metadata=_help("split of --data the agent learns on"))
    eval_split: str = field(default="test", metadata=_help("split evaluated on; absent: --eval-size records are held out of the training split"))
    eval_size: int = field(default=500, metadata=_help("evaluation prompts (at most)"))
    max_train: Optional[int] = field(default=None, metadata=_help("learn on the first N training prompts only"))
    max_prompt_tokens: Optional[int] = field(
        default=None, metadata=_help("skip (and count) prompts longer than this many policy tokens; never truncated")
    )

    def __post_init__(self) -> None:
        _check_source("--data", self.data, data=True)
        _check_source("--eval-data", self.eval_data, data=True)
        _require(self.eval_data is None or self.data is not None, "--eval-data needs --data")
        _require(self.eval_size > 0, f"--eval-size must be positive, got {self.eval_size}")
        _require(self.max_train is None or self.max_train > 0, f"--max-train must be positive, got {self.max_train}")
        _require(self.max_prompt_tokens is None or self.max_prompt_tokens > 0, f"--max-prompt-tokens must be positive, got {self.max_prompt_tokens}")


@dataclass
class EvalConfig:
    """Win rate against the references on held-out prompts (paper §5.2, Metrics)."""

    _argument_group_name: ClassVar[str] = "evaluation"

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


@dataclass
class ERMConfig:
    """The epistemic reward model (paper §4.2): K MLP heads on a frozen backbone, trained by Eq. 9."""

    _argument_group_name: ClassVar[str] = "ERM (epistemic reward model)"

    erm_heads: int = field(default=20, metadata=_help("K: ensemble heads (posterior samples)"))
    erm_hidden: int = field(default=128, metadata=_help("width of each head's two hidden layers"))
    erm_lambda: float = field(default=0.5, metadata=_help("lambda of Eq. 9: pull of each head to its initial weights"))
    erm_lr: float = field(default=1e-3, metadata=_help("Adam learning rate of the heads"))
    erm_sgd_steps: int = field(default=5, metadata=_help("Adam steps per round (one round per learner step)"))
    erm_batch_size: int = field(default=64, metadata=_help("pairs per head per Adam step, drawn from all labels so far"))
    erm_backbone: Optional[str] = field(
        default=None,
        metadata=_help(
            "transformers model (name or path) giving the features; pm: the built-in task's pretrained preference model "
            "(the paper's PairRM); default: pi_ref"
        ),
    )
    erm_pooling: Optional[str] = field(
        default=None,
        metadata=_help(
            "pooling of the backbone's hidden states over the response; default: last for the preference model (the "
            "state its score reads), mean for any other backbone; tokens (beyond the paper): none, each head scores every "
            "response token and sums the scores",
            choices=["mean", "sum", "last", "tokens"],
        ),
    )
    erm_layer: int = field(
        default=-1, metadata=_help("which hidden states to pool: 0 = input embeddings, i = after block i, -1 = last")
    )
    erm_logprobs: bool = field(
        default=False,
        metadata=_help("append the sum, mean and min of the backbone's log-probs of the response tokens (a causal LM)"),
    )
    erm_grounding: bool = field(
        default=False,
        metadata=_help(
            "beyond the paper, with --erm-pooling tokens: append to each token's features the largest cosine similarity of "
            "its input embedding to the prompt tokens' and to the earlier response tokens' (BERTScore's greedy matching): how "
            "closely the token is copied from the prompt, or repeats itself"
        ),
    )

    erm_gate: Optional[float] = field(
        default=None,
        metadata=_help(
            "confidence-gated self-labelling (beyond the paper): ERM-labelled pairs only where at least this share of the "
            "heads agree, several per prompt, from every prompt of the batch; default: the paper's rule (one sampled head's "
            "best vs worst candidate of a prompt the oracle is not asked about)"
        ),
    )
    erm_anchor: bool = field(
        default=False,
        metadata=_help(
            "beyond the paper: each ERM-labelled pair is the oracle's winner of a duel against the ensemble-mean worst other "
            "candidate of the same prompt, instead of a sampled head's best vs worst of a prompt the oracle is not asked about"
        ),
    )
    erm_anchors: int = field(
        default=1,
        metadata=_help(
            "beyond the paper, with --erm-anchor: anchored pairs per oracle duel, its winner against each of the "
            "ensemble-mean N worst other candidates (more self-labelled pairs per oracle label; --gamma at least 1/(1+N))"
        ),
    )
    erm_soft_labels: bool = field(
        default=False,
        metadata=_help(
            "beyond the paper: the policy learns each ERM-labelled pair by its loss expected under the ensemble's "
            "preference probability (mean over heads of sigma(r_k(y) - r_k(y'))) instead of the hard label"
        ),
    )

    def __post_init__(self) -> None:
        if self.erm_backbone not in ("pi_ref", "pm"):
            _check_source("--erm-backbone", self.erm_backbone)
        _require(self.erm_gate is None or 0.5 < self.erm_gate <= 1.0, f"--erm-gate must be in (0.5, 1], got {self.erm_gate}")
        _require(not (self.erm_anchor and self.erm_gate is not None), "--erm-anchor and --erm-gate choose the ERM's pairs two ways: drop one")
        _require(self.erm_anchors >= 1, f"--erm-anchors must be at least 1, got {self.erm_anchors}")
        _require(self.erm_anchor or self.erm_anchors == 1, "--erm-anchors sets how many pairs --erm-anchor makes per oracle duel: add --erm-anchor")
        _require(
            not (self.erm_anchor and self.erm_soft_labels),
            "--erm-soft-labels weighs a sampled head's own pairs; --erm-anchor's pairs carry the oracle's winner: drop one",
        )
        _require(self.erm_heads >= 2, f"--erm-heads must be at least 2 (an ensemble), got {self.erm_heads}")
        _require(self.erm_hidden > 0, f"--erm-hidden must be positive, got {self.erm_hidden}")
        _require(self.erm_lambda >= 0, f"--erm-lambda must be >= 0, got {self.erm_lambda}")
        _require(self.erm_lr > 0, f"--erm-lr must be positive, got {self.erm_lr}")
        _require(self.erm_sgd_steps > 0, f"--erm-sgd-steps must be positive, got {self.erm_sgd_steps}")
        _require(self.erm_batch_size > 0, f"--erm-batch-size must be positive, got {self.erm_batch_size}")
        _require(
            self.erm_pooling in (None, "mean", "sum", "last", "tokens"),
            f"unknown --erm-pooling {self.erm_pooling!r} (known: mean, sum, last, tokens)",
        )
        _require(
            not self.erm_grounding or self.erm_pooling == "tokens",
            "--erm-grounding adds features to each response token: it needs --erm-pooling tokens",
        )


LR_SCHEDULES = ("cosine", "constant", "linear", "constant_with_warmup")
DEFAULT_BON = 16  # N of best-of-N inference for the agents that infer by it
BURN_IN_SHARE = 0.2  # paper: 1k of 50k queries (2%); our ERM starts from scratch on a tiny backbone and needs ~1k labels to beat chance


@dataclass
class TrainConfig:
    """One alignment run: agent, DAP loss, query budget and the loop's knobs (paper §5.2)."""

    _argument_group_name: ClassVar[str] = "agent and loop"

    agent: str = field(
        default="online",
        metadata=_help("agent recipe: online, offline, sea-noalign, sea, bon-passive, bon-active, sea-bon, erm-bon (Table 1), apl, xpo"),
    )
    explore: Optional[str] = field(
        default=None, metadata=_help("duel selection rule: passive, ee_ts, bai_ts, best_worst_ts, uncertainty; default: the agent's")
    )
    clash: str = field(
        default="mean",
        metadata=_help(
            "a duel's second response where the rule's own second pick cannot differ from the first (a clash): "
            "mean: the ERM's mean-best other candidate; random: a uniformly drawn other one (the paper's code)",
            choices=["mean", "random"],
        ),
    )
    loss: str = field(default="dpo", metadata=_help("direct optimizer F of Eq. 8: dpo, ipo, slic, simpo"))
    beta: Optional[float] = field(
        default=None, metadata=_help("loss temperature beta; default 0.1 (dpo), 0.2 (slic), 2.0 (simpo); required for ipo")
    )
    budget: int = field(default=5000, metadata=_help("oracle queries (labelled training pairs) to spend"))
    batch_size: int = field(default=32, metadata=_help("prompts (pairs) per step"))
    num_candidates: Optional[int] = field(
        default=None, metadata=_help("M: responses sampled per prompt; default 20 with a reward model, else 2")
    )
    train_temperature: float = field(default=0.7, metadata=_help("sampling temperature of the actor"))
    lr: float = field(default=2e-4, metadata=_help("peak learning rate (AdamW)"))
    lr_schedule: str = field(default="cosine", metadata=_help("learning-rate schedule", choices=list(LR_SCHEDULES)))
    warmup_ratio: float = field(default=0.03, metadata=_help("share of the learner steps spent on linear warm-up"))
    max_grad_norm: float = field(default=1.0, metadata=_help("gradient clipping"))
    rollback_kl: Optional[float] = field(
        default=None,
        metadata=_help(
            "beyond the paper, a rollback guard: when a learner step's Monte Carlo KL(pi_theta || pi_ref) on its pairs "
            "exceeds this many nats, the policy returns to its weights and optimizer state of 20-40 steps before, "
            "at half the rate from then on (at most once every 20 steps; the labels stay spent); default: off"
        ),
    )
    rollback_kl_ratio: Optional[float] = field(
        default=None,
        metadata=_help(
            "with --rollback-kl: the rollback threshold follows the run's own KL level, this many times the median KL "
            "of the last 40 learner steps, never below --rollback-kl (a burst, not a level, starts a rollback); default: off"
        ),
    )
    micro_batch_size: Optional[int] = field(
        default=None,
        metadata=_help("pairs per learner forward/backward; their gradients accumulate into one step of the batch (default: the whole batch)"),
    )
    gradient_checkpointing: bool = field(
        default=False, metadata=_help("recompute the policy's layer activations in backward instead of keeping them: less memory, more compute")
    )
    label_smoothing: float = field(default=0.0, metadata=_help("dpo only: conservative DPO's epsilon"))
    gamma: float = field(default=0.7, metadata=_help("mixture ratio: share of oracle pairs in a policy batch after burn-in"))
    anchor_only: bool = field(
        default=False,
        metadata=_help(
            "beyond the paper, with --erm-anchor: after burn-in the policy learns each oracle duel only as its anchored pair "
            "(the oracle's winner against the ERM's worst other candidate; the duel itself where the prompt has no third), "
            "one pair per query; the oracle's pairs still train the ERM, and --gamma does not apply"
        ),
    )
    burn_in: Optional[int] = field(
        default=None, metadata=_help("queries learnt from the oracle alone (gamma = 1) first; default 20%% of the budget")
    )
    eval_bon: Optional[int] = field(
        default=None, metadata=_help("evaluate best-of-N with the ERM's mean reward; default 16 for BoN agents, else 1 (greedy)")
    )
    apl_pool_factor: int = field(default=4, metadata=_help("apl: prompts drawn per step, as a multiple of the batch"))
    apl_entropy: str = field(
        default="sequence",
        metadata=_help("apl: predictive entropy from summed (sequence) or per-token log-probs", choices=["sequence", "token"]),
    )
    xpo_alpha: float = field(default=1e-5, metadata=_help("xpo: weight of the optimism term alpha * log pi(y~) on pi_ref's response"))
    sync_every: int = field(default=1, metadata=_help("actor <- learner weights every k steps (1 = online, k > 1 = iterative)"))
    eval_every: int = field(default=500, metadata=_help("evaluate every this many queries"))
    checkpoint_every: int = field(default=1000, metadata=_help("checkpoint every this many queries"))
    seed: int = field(default=0, metadata=_help("seed of prompts, sampling and selection"))
    out: Optional[str] = field(default=None, metadata=_help("run folder (must not exist unless --resume)"))
    resume: Optional[str] = field(default=None, metadata=_help("continue the run in this folder"))
    deterministic: bool = field(default=False, metadata=_help("torch deterministic algorithms (bit-exact resume)"))
    report_to: str = field(
        default="tensorboard", metadata=_help("trackers, comma-separated: tensorboard, wandb, trackio, or none (wandb and trackio are extras)")
    )
    push_to_hub: Optional[str] = field(
        default=None, metadata=_help("upload the trained policy, with a model card from the run, to this hub repo (OWNER/NAME)")
    )
    log_every: int = field(default=1, metadata=_help("learner steps between the trackers' train/* scalars"))
    eval_samples: int = field(default=8, metadata=_help("completions of each evaluation kept in completions.jsonl and the trackers"))

    def __post_init__(self) -> None:
        from sealign.agents import AGENTS
        from sealign.losses import resolve_beta

        from sealign.explore import CLASH_RULES, RULES

        _require(self.agent in AGENTS, f"unknown agent {self.agent!r} (known: {', '.join(AGENTS)})")
        agent = AGENTS[self.agent]
        _require(not agent.dpo_only or self.loss == "dpo", f"agent {self.agent} is built on DPO: --loss must be dpo, got {self.loss!r}")
        _require(
            agent.explore in RULES or self.explore in (None, agent.explore), f"agent {self.agent} selects its own duels: drop --explore"
        )
        if self.explore is None:
            self.explore = agent.explore
        _require(self.explore in RULES or self.explore == agent.explore, f"unknown --explore {self.explore!r} (known: {', '.join(RULES)})")
        _require(
            self.explore in ("passive", agent.explore) or agent.learn_erm,
            f"--explore {self.explore} needs a reward model; agent {self.agent} has none (try --agent sea)",
        )
        _require(self.clash in ("mean", "random"), f"unknown --clash {self.clash!r} (known: mean, random)")
        _require(
            self.clash == "mean" or self.explore in CLASH_RULES,
            f"--clash random: rule {self.explore} has no clash rule; drop --clash, or use an --explore with one ({', '.join(CLASH_RULES)})",
        )
        if self.num_candidates is None:
            self.num_candidates = agent.default_candidates
        _require(
            not agent.reference_duel or self.num_candidates == 2,
            f"agent {self.agent} duels one pi_theta and one pi_ref response: --num-candidates must be 2",
        )
        _require(self.apl_pool_factor >= 1, f"--apl-pool-factor must be at least 1, got {self.apl_pool_factor}")
        _require(self.apl_entropy in ("sequence", "token"), f"unknown --apl-entropy {self.apl_entropy!r} (known: sequence, token)")
        _require(self.xpo_alpha >= 0, f"--xpo-alpha must be >= 0, got {self.xpo_alpha}")
        if self.eval_bon is None:
            self.eval_bon = DEFAULT_BON if agent.best_of_n else 1
        _require(self.eval_bon >= 1, f"--eval-bon must be at least 1, got {self.eval_bon}")
        _require(self.eval_bon == 1 or agent.learn_erm, f"--eval-bon needs a reward model; agent {self.agent} has none")
        _require(self.eval_bon > 1 or not agent.best_of_n, f"agent {self.agent} infers by best-of-N: --eval-bon must be >= 2")
        _require(0.0 < self.gamma <= 1.0, f"--gamma must be in (0, 1], got {self.gamma}")
        if self.burn_in is None:
            self.burn_in = round(BURN_IN_SHARE * self.budget)
        _require(self.burn_in >= 0, f"--burn-in must be >= 0, got {self.burn_in}")
        self.beta = resolve_beta(self.loss, self.beta)  # unknown loss, missing or non-positive beta
        _require(self.budget > 0, f"--budget must be positive, got {self.budget}")
        _require(self.batch_size > 0, f"--batch-size must be positive, got {self.batch_size}")
        _require(self.batch_size <= self.budget, f"--batch-size ({self.batch_size}) exceeds --budget ({self.budget})")
        _require(
            self.micro_batch_size is None or self.micro_batch_size >= 1, f"--micro-batch-size must be at least 1, got {self.micro_batch_size}"
        )
        _require(self.num_candidates >= 2, f"--num-candidates must be at least 2 (a duel), got {self.num_candidates}")
        _require(self.train_temperature > 0, f"--train-temperature must be positive, got {self.train_temperature}")
        _require(self.lr > 0, f"--lr must be positive, got {self.lr}")
        _require(0.0 <= self.warmup_ratio < 1.0, f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        _require(self.rollback_kl is None or self.rollback_kl > 0, f"--rollback-kl must be positive (nats), got {self.rollback_kl}")
        _require(
            self.rollback_kl_ratio is None or self.rollback_kl is not None,
            "--rollback-kl-ratio sets the rollback guard's threshold relative to the run's KL; it needs --rollback-kl (its least threshold)",
        )
        _require(
            self.rollback_kl_ratio is None or self.rollback_kl_ratio > 1,
            f"--rollback-kl-ratio must be above 1 (times the run's median KL), got {self.rollback_kl_ratio}",
        )
        _require(self.rollback_kl is None or agent.learn_policy, f"--rollback-kl guards the policy's training; agent {self.agent} trains none")
        _require(
            self.rollback_kl is None or not agent.reference_duel,
            f"--rollback-kl reads the KL on the duels' responses; agent {self.agent} draws half of them from pi_ref, where it cannot see the drift",
        )
        _require(self.sync_every >= 1, f"--sync-every must be >= 1, got {self.sync_every}")
        _require(self.eval_every > 0, f"--eval-every must be positive, got {self.eval_every}")
        _require(self.checkpoint_every > 0, f"--checkpoint-every must be positive, got {self.checkpoint_every}")
        _require(0.0 <= self.label_smoothing < 0.5, f"--label-smoothing must be in [0, 0.5), got {self.label_smoothing}")
        _require(self.label_smoothing == 0.0 or self.loss == "dpo", "--label-smoothing applies to --loss dpo only")
        from sealign.trackers import parse_report_to

        parse_report_to(self.report_to)  # an unknown or uninstalled tracker fails here
        if self.push_to_hub is not None:
            from huggingface_hub.utils import HFValidationError, validate_repo_id

            try:
                validate_repo_id(self.push_to_hub)
            except HFValidationError:
                raise SealignError(f"--push-to-hub {self.push_to_hub!r} is not a hub repo name (OWNER/NAME)") from None
        _require(self.log_every >= 1, f"--log-every must be at least 1, got {self.log_every}")
        _require(self.eval_samples >= 0, f"--eval-samples must be >= 0, got {self.eval_samples}")
        _require((self.out is None) != (self.resume is None), "give exactly one of --out (new run) or --resume (existing run)")

    def batch_split(self, learned: int) -> tuple[int, int]:
        """(oracle-labelled, ERM-labelled) pairs in the policy batch of the step that starts after
        `learned` queries: the mixture p_Bmix = gamma p_B + (1 - gamma) p_B_ERM of §4.3.

        Self-aligning agents (pi <-> R) fill a share 1 - gamma of the batch with ERM-labelled
        pairs once the burn-in is over; every other agent learns from oracle pairs only.
        """
        from sealign.agents import AGENTS

        mixed = AGENTS[self.agent].self_align and learned >= self.burn_in
        if mixed and self.anchor_only:  # a whole batch of duels, each learnt as its anchored pair
            n = min(self.batch_size, self.budget - learned)
            return n, n
        erm = min(round((1 - self.gamma) * self.batch_size), self.batch_size - 1) if mixed else 0
        return min(self.batch_size - erm, self.budget - learned), erm

    @property
    def total_steps(self) -> int:
        """Learner updates until the budget is spent (ERM-labelled pairs stretch it for pi <-> R)."""
        learned, steps = 0, 0
        while learned < self.budget:
            learned += self.batch_split(learned)[0]
            steps += 1
        return steps

    def pool_size(self, pairs: int) -> int:
        """Prompts the actor answers to supply `pairs` more pairs, at most a batch's worth: APL draws
        a pool `apl_pool_factor` times larger and keeps the most uncertain prompts."""
        from sealign.agents import AGENTS

        return min(pairs, self.batch_size) * (self.apl_pool_factor if AGENTS[self.agent].ranks_pool else 1)

    @property
    def warmup_steps(self) -> int:
        return int(self.warmup_ratio * self.total_steps)


BACKENDS = ("local", "ray")


@dataclass
class BackendConfig:
    """Where the roles run (paper §5.1, Fig. 4): in this process, or as Ray actors on a cluster.

    `actors`, `async_collect` and `max_staleness` shape the algorithm (which weights sample
    which prompts under which seed) and are kept by a resumed run; the rest only places the
    work, so a run may resume on another backend or cluster and still give the same labels.
    """

    _argument_group_name: ClassVar[str] = "backend"

    backend: str = field(default="local", metadata=_help("local: one process; ray: actors and oracle as Ray actors", choices=list(BACKENDS)))
    actors: int = field(
        default=1, metadata=_help("actors sampling each batch, one contiguous shard each (the local backend runs the shards in turn)")
    )
    async_collect: bool = field(
        default=False,
        metadata=_help("actors sample the next batch while the learner steps (the actors' weights lag by up to --max-staleness updates)", aliases=["--async"]),
    )
    max_staleness: int = field(default=1, metadata=_help("with --async: batches sampled ahead, i.e. the most updates the actors' weights may lag"))
    ray_address: Optional[str] = field(
        default=None, metadata=_help("join this Ray cluster (default: $RAY_ADDRESS, else start Ray on this machine)")
    )
    actor_cpus: float = field(default=1.0, metadata=_help("CPUs per Ray actor (its torch threads)"))
    actor_gpus: float = field(default=0.0, metadata=_help("GPUs per Ray actor (its model goes to cuda when > 0)"))
    oracle_actors: int = field(
        default=1, metadata=_help("Ray actors scoring a task or rm: oracle, 0 = in the driver (judge and http oracles are services already)")
    )
    oracle_gpus: float = field(default=0.0, metadata=_help("GPUs per oracle actor (an rm: oracle with --oracle-device cuda needs them)"))

    ALGORITHM = ("actors", "async_collect", "max_staleness")  # kept on resume

    def __post_init__(self) -> None:
        _require(self.backend in BACKENDS, f"unknown --backend {self.backend!r} (known: {', '.join(BACKENDS)})")
        _require(self.actors >= 1, f"--actors must be at least 1, got {self.actors}")
        _require(self.max_staleness >= 1, f"--max-staleness must be at least 1, got {self.max_staleness}")
        _require(self.actor_cpus > 0, f"--actor-cpus must be positive, got {self.actor_cpus}")
        _require(self.actor_gpus >= 0, f"--actor-gpus must be >= 0, got {self.actor_gpus}")
        _require(self.oracle_actors >= 0, f"--oracle-actors must be >= 0, got {self.oracle_actors}")
        _require(self.oracle_gpus >= 0, f"--oracle-gpus must be >= 0, got {self.oracle_gpus}")
        if self.backend == "local":
            for name in ("ray_address", "actor_cpus", "actor_gpus", "oracle_actors", "oracle_gpus"):
                _require(getattr(self, name) == getattr(BackendConfig, name), f"--{name.replace('_', '-')} needs --backend ray")
        else:
            _require(
                importlib.util.find_spec("ray") is not None,
                "--backend ray needs Ray, which is not installed: pip install 'sealign[ray]'",
            )


@dataclass
class RunConfig:
    """Everything one run is made of: the parts above, each validated when it is built. Saved as
    the run folder's config.json and read back on resume, so a run is rerun from that file alone."""

    train: TrainConfig
    task: TaskConfig = field(default_factory=TaskConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    oracle: OracleConfig = field(default_factory=OracleConfig)
    erm: ERMConfig = field(default_factory=ERMConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pm: PreferenceModelConfig = field(default_factory=PreferenceModelConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)

    SECTIONS = ("task", "policy", "sft", "oracle", "erm", "model", "data", "pm", "backend", "train")  # config.json's order

    def __post_init__(self) -> None:
        # with --resume, --ref names where a copy of the run's pi_ref now lies (see sealign.loop.resume)
        _require(
            self.train.resume is not None or self.model.ref is None or self.model.policy is not None,
            "--ref needs --policy (the built-in pi_ref is its own reference)",
        )
        _require(
            self.model.actor != "vllm" or self.backend.backend == "local",
            "--actor vllm samples in the driver's process: use --backend local (Ray actors sample with transformers)",
        )
        from sealign.agents import AGENTS

        shaped = [
            flag
            for flag, on in (
                ("--erm-gate", self.erm.erm_gate is not None),
                ("--erm-anchor", self.erm.erm_anchor),
                ("--erm-soft-labels", self.erm.erm_soft_labels),
            )
            if on
        ]
        aligning = ", ".join(name for name, agent in AGENTS.items() if agent.self_align)
        _require(self.erm.erm_anchor or not self.train.anchor_only, "--anchor-only learns the pairs of --erm-anchor: add it")
        anchors = self.erm.erm_anchors
        _require(anchors == 1 or not self.train.anchor_only, f"--anchor-only learns each duel as one anchored pair: drop --erm-anchors {anchors}")
        _require(  # N anchored pairs per oracle duel at most: the ERM's share cannot exceed N times the oracle's
            not self.erm.erm_anchor or self.train.anchor_only or self.train.gamma >= 1 / (1 + anchors),
            f"--erm-anchor gives at most {anchors} ERM-labelled pair{'s' if anchors > 1 else ''} per oracle duel (--erm-anchors): "
            f"--gamma must be at least {1 / (1 + anchors):.3g}, got {self.train.gamma}",
        )
        _require(  # a resumed run keeps its saved agent and settings (the CLI refuses changed ones)
            not shaped or self.train.resume is not None or AGENTS[self.train.agent].self_align,
            f"{' and '.join(shaped)} {'apply' if len(shaped) > 1 else 'applies'} to the ERM-labelled pairs of a self-aligning "
            f"agent ({aligning}); agent {self.train.agent} learns from none",
        )

    @property
    def folder(self) -> str:
        return self.train.resume or self.train.out

    def to_dict(self) -> dict:
        """config.json's settings: where the run lives is not one of them."""
        out = {name: dataclasses.asdict(getattr(self, name)) for name in self.SECTIONS}
        out["train"].update(out=None, resume=None)
        return out

    @classmethod
    def from_dict(cls, saved: dict, folder: str, backend: Optional[BackendConfig] = None) -> "RunConfig":
        """The settings a run folder was started with, to resume it. The backend's placement
        (cluster, resources) comes from `backend`: it changes no label; what shapes the
        algorithm (BackendConfig.ALGORITHM) is the saved one."""
        where = f"{Path(folder) / 'config.json'}"
        try:
            parts = {
                name: kind(**saved.get(name, {}))
                for name, kind in (
                    ("task", TaskConfig), ("policy", PolicyConfig), ("sft", SFTConfig), ("oracle", OracleConfig),
                    ("erm", ERMConfig), ("model", ModelConfig), ("data", DataConfig), ("pm", PreferenceModelConfig),
                )
            }  # fmt: skip
            train = TrainConfig(**{**saved["train"], "out": None, "resume": str(folder)})
            kept = {k: v for k, v in saved.get("backend", {}).items() if k in BackendConfig.ALGORITHM}
        except (KeyError, TypeError) as e:
            raise SealignError(f"{where}: not a sealign run config ({e})") from None
        return cls(train=train, backend=dataclasses.replace(backend or BackendConfig(), **kept), **parts)
