"""Tiny random Hugging Face models over the keywords tokenizer, saved like real checkpoints.

Tests and benchmarks load them by path, through the same code as a hub model, with no
download: a GPT-2 and a Llama causal LM (policies) and a GPT-2 scalar reward model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }} {% endfor %}"  # words only: fits a word-level vocabulary


def build_tiny_models(root: str | Path, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> dict[str, str]:
    """Save `gpt2`, `llama` and `rm` under `root` (each with the tokenizer, given a chat
    template); returns name -> folder."""
    root = Path(root)
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    gpt2 = dict(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2, **ids)
    llama = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, **ids,
    )  # fmt: skip
    torch.manual_seed(seed)
    models = {
        "gpt2": GPT2LMHeadModel(GPT2Config(**gpt2)),
        "llama": LlamaForCausalLM(llama),
        "rm": GPT2ForSequenceClassification(GPT2Config(**gpt2, num_labels=1)),
    }
    paths = {}
    for name, model in models.items():
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        paths[name] = str(root / name)
    return paths
