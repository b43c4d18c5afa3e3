"""Shared fixtures: a small task, a private pi_ref cache, and quick SFT settings."""

from __future__ import annotations

import pytest
import torch

from sealign.config import OracleConfig, PolicyConfig, SFTConfig, TaskConfig
from sealign.oracles import RewardOracle
from sealign.tasks import make_task

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's ~/.cache: every test session builds into its own folder."""
    monkeypatch.setenv("SEALIGN_HOME", str(tmp_path_factory.getbasetemp() / "sealign_home"))


@pytest.fixture(scope="session")
def task_cfg() -> TaskConfig:
    return TaskConfig(n_train=300, n_holdout=40)


@pytest.fixture(scope="session")
def task(task_cfg):
    return make_task(task_cfg)


@pytest.fixture
def oracle(task):
    return RewardOracle(task.reward, OracleConfig())


QUICK_SFT = SFTConfig(sft_steps=30, sft_batch_size=16, sft_lr=1e-3, sft_warmup=5)
TINY = PolicyConfig(size="tiny")


# -- tiny random Hugging Face models, saved to disk and loaded by path like any checkpoint -------

CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }} {% endfor %}"  # words only: fits the word-level vocabulary


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, task) -> dict[str, str]:
    """Folders of a tiny GPT-2 and a tiny Llama causal LM and a tiny GPT-2 scalar reward model,
    all random, over the keywords task's word-level tokenizer (nothing is downloaded)."""
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("tiny_models")
    tokenizer = task.build_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    gpt2 = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2, **ids)
    llama = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, **ids,
    )
    torch.manual_seed(0)
    models = {
        "gpt2": GPT2LMHeadModel(gpt2),
        "llama": LlamaForCausalLM(llama),
        "rm": GPT2ForSequenceClassification(GPT2Config(**{**gpt2.to_dict(), "num_labels": 1})),
    }
    paths = {}
    for name, model in models.items():
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        paths[name] = str(root / name)
    return paths


@pytest.fixture(scope="session")
def prompts_jsonl(tmp_path_factory, task) -> str:
    """40 keywords records as a user's JSONL file."""
    from sealign.data import write_records

    path = tmp_path_factory.mktemp("data") / "prompts.jsonl"
    write_records(path, task.records("holdout")[:40])
    return str(path)
