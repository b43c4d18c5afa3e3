"""Which policy and reference a run starts from: the built-in SFT pi_ref, or any transformers
causal LM by hub name or folder (`--policy`), with an optional separate reference (`--ref`),
on the configured device and dtype, optionally trained through LoRA adapters (`--lora-r`)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from sealign.config import DataConfig, ERMConfig, ModelConfig, PolicyConfig, PreferenceModelConfig, SFTConfig, TaskConfig
from sealign.errors import SealignError
from sealign.policy import load_policy
from sealign.sft import ensure_reference, weights_fingerprint


@dataclass
class Models:
    policy: PreTrainedModel  # pi_theta at step 0
    tokenizer: PreTrainedTokenizerBase
    ref: Optional[PreTrainedModel]  # a separate frozen pi_ref, or None: the learner copies the initial policy
    ref_source: str  # folder or hub name of pi_ref: the ERM's default backbone
    fingerprint: str  # identifies the starting weights, so a resume can refuse a changed pi_ref
    source: str  # folder or hub name the policy's weights were read from


def fingerprint(source: str) -> str:
    """Hash of a local model's weights; a hub name stands for itself."""
    path = Path(source).expanduser()
    return weights_fingerprint(path) if path.is_dir() else f"hub:{source}"


def load_models(
    cfg: ModelConfig,
    task_cfg: TaskConfig,
    policy_cfg: PolicyConfig,
    sft_cfg: SFTConfig,
    *,
    reference_copy: Optional[str] = None,
    seed: int = 0,
    progress: bool = True,
) -> Models:
    """The run's models (LoRA adapters initialised under `seed`); `reference_copy` (a resume
    elsewhere) is a folder that stands in for pi_ref's source: the built-in pi_ref, the --policy
    that is its own reference, or --ref."""
    if reference_copy is not None and not Path(reference_copy).expanduser().is_dir():
        raise SealignError(f"--ref {reference_copy!r}: no such folder (a copy of the run's pi_ref)")
    if cfg.ref is None and reference_copy is not None:
        source = reference_copy
    elif cfg.policy is None:
        source = str(ensure_reference(task_cfg, policy_cfg, sft_cfg, progress=progress).path)
    else:
        source = cfg.policy
    policy, tokenizer = load_policy(source, cfg.device, cfg.dtype, cfg.chat_template)
    ref = None
    ref_path = cfg.ref if cfg.ref is None or reference_copy is None else reference_copy
    ref_source = ref_path or source
    if ref_path is not None:
        ref, _ = load_policy(ref_path, cfg.device, cfg.dtype)
        ref.requires_grad_(False)
    if cfg.lora_r:
        policy = add_lora(policy, cfg.lora_r, cfg.lora_alpha, seed)
    stamp = fingerprint(source) if ref_path is None else f"{fingerprint(source)}+{fingerprint(ref_path)}"
    return Models(policy, tokenizer, ref, ref_source, stamp, source)


PI_REF, PREFERENCE_MODEL = "pi_ref", "pm"  # --erm-backbone names for the reference policy and the task's preference model


def on_builtin_task(model_cfg: ModelConfig, data_cfg: DataConfig) -> bool:
    """Whether a run aligns the built-in pi_ref on the built-in task's data: only there does the
    task's pretrained preference model know the words it reads."""
    return model_cfg.policy is None and data_cfg.data is None


def preference_model_source(
    task_cfg: TaskConfig, pm_cfg: PreferenceModelConfig, model_cfg: ModelConfig, data_cfg: DataConfig, flag: str, *, progress: bool = True
) -> str:
    """The folder of the built-in task's preference model, built first if absent."""
    from sealign.preference_model import ensure_preference_model

    if not on_builtin_task(model_cfg, data_cfg):
        raise SealignError(f"{flag}: the pretrained preference model belongs to the built-in task; with --policy or --data name a model")
    return str(ensure_preference_model(task_cfg, pm_cfg, progress=progress).path)


def erm_backbone_source(
    erm_cfg: ERMConfig, task_cfg: TaskConfig, pm_cfg: PreferenceModelConfig, model_cfg: ModelConfig, data_cfg: DataConfig,
    *, progress: bool = True,
) -> tuple[Optional[str], str]:  # fmt: skip
    """Which frozen transformer the ERM reads (None: pi_ref, the default), and how its states are
    pooled. `pm` is the built-in task's pretrained preference model, the analogue of the paper's
    PairRM (§5.2), pooled by default at its last token, the state its own score reads (PairRM's
    features are likewise states at marker tokens, not pooled)."""
    if erm_cfg.erm_backbone in (None, PI_REF):
        return None, erm_cfg.erm_pooling or "mean"
    if erm_cfg.erm_backbone != PREFERENCE_MODEL:
        return erm_cfg.erm_backbone, erm_cfg.erm_pooling or "mean"
    if erm_cfg.erm_logprobs:
        raise SealignError("--erm-logprobs reads a causal LM's log-probs; the preference model is a reward model: drop one of them")
    return preference_model_source(task_cfg, pm_cfg, model_cfg, data_cfg, "--erm-backbone pm", progress=progress), erm_cfg.erm_pooling or "last"


def add_lora(model: PreTrainedModel, rank: int, alpha: float, seed: int = 0) -> PreTrainedModel:
    """Wrap the policy in LoRA adapters on every linear layer (peft picks them per architecture),
    initialised under `seed` so that two runs of one config start alike."""
    import torch
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return get_peft_model(model, config)


def save_policy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: Path) -> None:
    """Save a loadable policy: LoRA adapters are merged into the base weights first, so the
    folder is a plain transformers checkpoint (`sealign eval --policy` and any HF tool read it)."""
    if hasattr(model, "merge_and_unload"):  # a peft model; merging a copy leaves the learner's intact
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
