"""How much memory a run will need on the policy's device, estimated before any work starts.

A 1B policy in fp32 is 4 GB of weights, but its run holds three copies (learner, pi_ref, actor),
AdamW's two moments and the gradients, then either a learner step's logits and activations or
the actor's key/value cache: what runs out of memory is rarely the weights. The estimate is a
worst case (the longest prompt, every response at its length limit), part by part, so a user
sees which knob to turn; `check_memory` refuses a run that cannot fit before anything is written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch

from sealign.actor import GENERATION_PROMPTS
from sealign.agents import AGENTS
from sealign.config import RunConfig
from sealign.errors import SealignError

# Activation bytes a transformer layer keeps for backward, per token and per hidden unit, in
# units of the activation dtype's size: Korthikanti et al. (2022), Eq. 2 gives 34 bytes in
# 16-bit for s·b·h, i.e. 17 elements, without the attention-score term that fused (SDPA)
# attention does not store.
ACTIVATIONS_PER_HIDDEN = 17
GiB = 2**30


@dataclass(frozen=True)
class ModelShape:
    """What the estimate reads of a causal LM: sizes in bytes and its dimensions."""

    weight_bytes: int  # every parameter, at its dtype
    trainable_bytes: int  # parameters the optimizer updates (LoRA: the adapters only)
    dtype_bytes: int  # size of one activation element
    layers: int
    hidden: int
    kv_width: int  # key + value width of one token in one layer, each (kv heads x head dim)
    vocab: int


@dataclass(frozen=True)
class Workload:
    """The shapes one run's steps work on."""

    micro_pairs: int  # preference pairs per learner forward/backward
    seq_len: int  # longest prompt + response + <eos>
    generation_rows: int  # sequences the actor samples at once with transformers (prompts x candidates)
    gradient_checkpointing: bool = False
    engine_bytes: int = 0  # what a vLLM actor's engine reserves (its weights and paged cache)


def run_workload(run: RunConfig, seq_len: int, capacity: Optional[int] = None) -> Workload:
    """The shapes of `run`'s steps, for sequences of at most `seq_len` tokens, on a device of
    `capacity` bytes (what a vLLM engine's share is taken of)."""
    cfg = run.train
    vllm = run.model.actor == "vllm"
    # with vLLM, transformers samples only XPO's pi_ref candidate, one per prompt
    per_prompt = int(AGENTS[cfg.agent].reference_duel) if vllm else cfg.num_candidates
    sampled = cfg.pool_size(cfg.batch_size) * per_prompt  # one actor call's rows
    rows = min(sampled, run.model.generation_batch_size or GENERATION_PROMPTS * per_prompt)
    engine = round(run.model.actor_memory * capacity) if vllm and capacity else 0
    return Workload(cfg.micro_batch_size or cfg.batch_size, seq_len, rows, cfg.gradient_checkpointing, engine)


def shape_of(model: torch.nn.Module) -> ModelShape:
    """The shape of a loaded (or meta-device) transformers model."""
    cfg = model.config.get_text_config()
    params = list(model.parameters())
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return ModelShape(
        weight_bytes=sum(p.numel() * p.element_size() for p in params),
        trainable_bytes=sum(p.numel() * p.element_size() for p in params if p.requires_grad),
        dtype_bytes=torch.finfo(model.dtype).bits // 8,
        layers=cfg.num_hidden_layers,
        hidden=cfg.hidden_size,
        kv_width=kv_heads * head_dim,
        vocab=cfg.vocab_size,
    )


def estimate(shape: ModelShape, work: Workload) -> dict[str, int]:
    """Bytes per part on the policy's device, and "peak": the parts always held plus the larger
    of a learner step's and a sampling call's transient memory (they do not overlap). Other
    models on the device (an ERM backbone that is not pi_ref, a reward-model oracle) are not
    counted: their size is not known before they load."""
    b = shape.dtype_bytes
    sequences = 2 * work.micro_pairs  # chosen and rejected
    tokens = sequences * work.seq_len
    if work.gradient_checkpointing:  # each layer's input, plus one layer recomputed at a time
        activations = tokens * shape.hidden * b * (shape.layers + ACTIVATIONS_PER_HIDDEN)
    else:
        activations = tokens * shape.hidden * b * ACTIVATIONS_PER_HIDDEN * shape.layers
    parts = {
        "policy": shape.weight_bytes,
        "reference": shape.weight_bytes,
        "actor": shape.weight_bytes,
        "gradients": shape.trainable_bytes,
        "optimizer": 2 * shape.trainable_bytes,  # AdamW's two moments, at the parameters' dtype
        # the logits and their gradient at the model's dtype; log-probs are taken in fp32 chunks
        "logits": 2 * tokens * shape.vocab * b,
        "activations": activations,
        # keys and values of every layer for every sampled row, prompt and response; plus one
        # step's fp32 logits per row
        "kv cache": 2 * shape.layers * work.generation_rows * work.seq_len * shape.kv_width * b
        + work.generation_rows * shape.vocab * 4,
        "vllm engine": work.engine_bytes,
    }
    held = sum(v for k, v in parts.items() if k not in ("logits", "activations", "kv cache"))
    parts["peak"] = held + max(parts["logits"] + parts["activations"], parts["kv cache"])
    return parts


def device_capacity(device: str) -> Optional[int]:
    """Total memory of `device` in bytes (RAM for the CPU); None where it cannot be read (mps)."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_properties(torch.device(device)).total_memory
    if device == "cpu":
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return None


def describe(parts: dict[str, int], device: str, capacity: Optional[int]) -> str:
    """One line: the peak, what fills it, and the device's total."""
    shown = ", ".join(f"{k} {format_bytes(v)}" for k, v in parts.items() if k != "peak" and v >= parts["peak"] / 100)
    of = f" of {format_bytes(capacity)}" if capacity else ""
    return f"memory estimate on {device}: peak {format_bytes(parts['peak'])}{of}" + (f" ({shown})" if shown else "")


def check_memory(parts: dict[str, int], device: str, capacity: Optional[int]) -> None:
    """Refuse, with one line naming the knobs, a run whose estimated peak exceeds the device."""
    if capacity is None or parts["peak"] <= capacity:
        return
    raise SealignError(
        f"estimated peak memory {format_bytes(parts['peak'])} exceeds the {format_bytes(capacity)} of {device} "
        f"(kv cache {format_bytes(parts['kv cache'])}, learner step {format_bytes(parts['logits'] + parts['activations'])}): lower "
        "--generation-batch-size or --micro-batch-size, add --gradient-checkpointing or --lora-r, "
        "or pass --no-memory-check to try anyway"
    )


def format_bytes(n: float) -> str:
    if n < GiB:
        return f"{n / 2**20:.1f} MiB"
    return f"{n / GiB:.2f} GiB" if n < 10 * GiB else f"{n / GiB:.0f} GiB"
