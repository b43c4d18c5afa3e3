"""The memory estimate (sealign.memory): its arithmetic by hand, the shapes it reads from real
transformers models, and a run refused before anything is written."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import sealign
from conftest import small_run
from sealign.errors import SealignError
from sealign.memory import ModelShape, Workload, check_memory, describe, estimate, shape_of

SHAPE = ModelShape(weight_bytes=1000, trainable_bytes=400, dtype_bytes=4, layers=2, hidden=8, kv_width=8, vocab=10)


def test_estimate_by_hand():
    """3 pairs = 6 sequences of 5 tokens = 30 tokens.
    held: 3 copies of 1000 + gradients 400 + AdamW 2 x 400 = 4200;
    logits 2 x 30 x 10 x 4 = 2400 (output and its gradient); activations 30 x 8 x 4 x 17 x 2 = 32640;
    kv cache 2 x 2 layers x 7 rows x 5 x 8 x 4 = 4480, plus 7 x 10 x 4 = 280 of fp32 logits;
    peak = 4200 + max(2400 + 32640, 4760) = 39240."""
    parts = estimate(SHAPE, Workload(micro_pairs=3, seq_len=5, generation_rows=7))
    assert (parts["logits"], parts["activations"], parts["kv cache"]) == (2400, 32640, 4760)
    assert parts["peak"] == 39240
    # checkpointing keeps each layer's input (30 x 8 x 4 x 2) and one layer's 17 (30 x 8 x 4 x 17)
    assert estimate(SHAPE, Workload(3, 5, 7, gradient_checkpointing=True))["activations"] == 1920 + 16320
    # sampling dominates when its rows are many: held + kv cache
    many = estimate(SHAPE, Workload(micro_pairs=1, seq_len=5, generation_rows=1000))
    assert many["peak"] == 4200 + many["kv cache"]


def test_shapes_of_real_models():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=3, n_head=2, vocab_size=50, n_positions=32))
    gpt2.transformer.wte.requires_grad_(False)
    shape = shape_of(gpt2)
    params = sum(p.numel() for p in gpt2.parameters())
    frozen = gpt2.transformer.wte.weight.numel()
    assert (shape.weight_bytes, shape.trainable_bytes) == (4 * params, 4 * (params - frozen))
    assert (shape.layers, shape.hidden, shape.kv_width, shape.vocab, shape.dtype_bytes) == (3, 16, 16, 50, 4)
    # grouped-query attention: keys and values are narrower than the hidden states
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=60)
    llama = LlamaForCausalLM(cfg).to(torch.bfloat16)
    assert (shape_of(llama).kv_width, shape_of(llama).dtype_bytes) == (16, 2)


def test_refusal_is_one_line_naming_the_knobs():
    parts = estimate(SHAPE, Workload(3, 5, 7))
    check_memory(parts, "cuda:0", capacity=parts["peak"])  # fits exactly
    check_memory(parts, "mps", capacity=None)  # unknown capacity: never refused
    with pytest.raises(SealignError) as e:
        check_memory(parts, "cuda:0", capacity=parts["peak"] - 1)
    assert "\n" not in str(e.value) and "--micro-batch-size" in str(e.value) and "--no-memory-check" in str(e.value)
    assert describe({**parts, "peak": 3 * 2**30}, "cpu", 24 * 2**30).startswith("memory estimate on cpu: peak 3.00 GiB of 24 GiB")


def test_a_run_that_cannot_fit_is_refused_before_its_folder_exists(tmp_path, task_cfg, monkeypatch):
    monkeypatch.setattr("sealign.loop.session.device_capacity", lambda device: 2**20)  # a 1 MiB device
    run = small_run(sealign.TrainConfig(budget=32, batch_size=16, out=str(tmp_path / "r")), task_cfg)
    with pytest.raises(SealignError, match="exceeds the 1.0 MiB of cpu"):
        sealign.train(run)
    assert not (tmp_path / "r").exists()


def test_bad_generation_batch_size_is_one_error_line(capsys, tmp_path):
    from test_cli import assert_one_error_line, run_cli

    code, _, err = run_cli(capsys, "train", "--generation-batch-size", "0", "--out", str(tmp_path / "run"))
    assert_one_error_line(code, err, "--generation-batch-size must be positive")
    assert not (tmp_path / "run").exists()
