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

from sealign.config import ModelConfig, PolicyConfig, SFTConfig, TaskConfig
from sealign.policy import load_policy
from sealign.sft import ensure_reference, weights_fingerprint


@dataclass
class Models:
    policy: PreTrainedModel  # pi_theta at step 0
    tokenizer: PreTrainedTokenizerBase
    ref: Optional[PreTrainedModel]  # a separate frozen pi_ref, or None: the learner copies the initial policy
    ref_source: str  # folder or hub name of pi_ref: the ERM's default backbone
    fingerprint: str  # identifies the starting weights, so a resume can refuse a changed pi_ref


def fingerprint(source: str) -> str:
    """Hash of a local model's weights; a hub name stands for itself."""
    path = Path(source).expanduser()
    return weights_fingerprint(path) if path.is_dir() else f"hub:{source}"


def load_models(
    cfg: ModelConfig, task_cfg: TaskConfig, policy_cfg: PolicyConfig, sft_cfg: SFTConfig, *, progress: bool = True
) -> Models:
    if cfg.policy is None:
        source = str(ensure_reference(task_cfg, policy_cfg, sft_cfg, progress=progress).path)
    else:
        source = cfg.policy
    policy, tokenizer = load_policy(source, cfg.device, cfg.dtype, cfg.chat_template)
    ref = None
    ref_source = cfg.ref or source
    if cfg.ref is not None:
        ref, _ = load_policy(cfg.ref, cfg.device, cfg.dtype)
        ref.requires_grad_(False)
    if cfg.lora_r:
        policy = add_lora(policy, cfg.lora_r, cfg.lora_alpha)
    stamp = fingerprint(source) if cfg.ref is None else f"{fingerprint(source)}+{fingerprint(cfg.ref)}"
    return Models(policy, tokenizer, ref, ref_source, stamp)


def add_lora(model: PreTrainedModel, rank: int, alpha: float) -> PreTrainedModel:
    """Wrap the policy in LoRA adapters on every linear layer (peft picks them per architecture)."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"))


def save_policy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: Path) -> None:
    """Save a loadable policy: LoRA adapters are merged into the base weights first, so the
    folder is a plain transformers checkpoint (`sealign eval --policy` and any HF tool read it)."""
    if hasattr(model, "merge_and_unload"):  # a peft model; merging a copy leaves the learner's intact
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
