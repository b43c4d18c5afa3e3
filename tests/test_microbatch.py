"""The learner's memory knobs change memory, not the step: micro-batches with gradient accumulation,
gradient checkpointing and the blocked log-softmax give the one-batch gradients, weights and figures."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from sealign import losses, policy
from sealign.learner import Learner, LearnerConfig, micro_steps, valid_share
from sealign.losses import masked_mean
from sealign.policy import block_logprobs, logit_blocks, sequence_logprobs, token_logprobs
from sealign.records import Preferences
from test_cli import assert_one_error_line, run_cli

# Float rounding of sums taken in another grouping (per micro-batch, per block), on fp32 tensors.
GRAD_TOL = dict(rtol=1e-5, atol=1e-6)
FIGURES = ("loss", "chosen_reward", "rejected_reward", "margin", "kl", "grad_norm", "lr", "valid_pairs", "optimism_logp")


def tiny_gpt2(tokenizer) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2, **ids))


def tiny_llama(tokenizer) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def tokenizer(task):
    return task.build_tokenizer()


@pytest.fixture(scope="module")
def pairs(task) -> Preferences:
    """8 pairs of several lengths; pairs 2 and 5 are ties (invalid), so micro-batches weigh unequally."""
    records = task.records("holdout")[:8]
    chosen = [task.optimal_summary(r.prompt) for r in records]
    rejected = [r.reference for r in records]
    for i in (2, 5):
        rejected[i] = chosen[i]
    return Preferences([r.prompt for r in records], chosen, rejected)


@pytest.fixture(scope="module")
def reference_samples(task) -> tuple[list[str], list[str]]:
    """5 (prompt, response) pairs standing for XPO's samples of pi_ref: 5 is not a multiple of 2 * micro."""
    records = task.records("holdout")[8:13]
    return [r.prompt for r in records], [r.reference for r in records]


def learner_for(model, tokenizer, loss: str = "dpo", **kw) -> Learner:
    """A learner on a copy of `model`; clipping is off so the raw accumulated gradients stay in .grad."""
    beta = 2.0 if loss == "simpo" else 0.1
    cfg = LearnerConfig(loss, beta, 1e-3, "constant", 0, 1, max_grad_norm=1e9, **kw)
    return Learner(copy.deepcopy(model), tokenizer, cfg)


def stepped(model, tokenizer, batch, samples=None, **kw) -> tuple[Learner, dict]:
    learner = learner_for(model, tokenizer, **kw)
    return learner, learner.step(batch, samples)


def trained(learner: Learner) -> list[torch.Tensor]:
    return [p for p in learner.model.parameters() if p.requires_grad]


def grads(learner: Learner) -> list[torch.Tensor]:
    return [p.grad for p in trained(learner)]


def adam_first_step_spread(ga: torch.Tensor, gb: torch.Tensor, lr: float, eps: float = 1e-8) -> torch.Tensor:
    """How far apart AdamW's first updates lr * g / (|g| + eps) can be for gradients `ga`, `gb`: the
    slope lr * eps / (|g| + eps)^2 at the smaller |g| between them. A near-zero gradient's rounding
    moves its weight by up to lr * |dg| / eps, so weights are compared to this, not to a fixed atol."""
    low = torch.where(ga * gb > 0, torch.minimum(ga.abs(), gb.abs()), torch.zeros_like(ga))
    return lr * (ga - gb).abs() * eps / (low + eps) ** 2


def assert_same_step(one: tuple[Learner, dict], other: tuple[Learner, dict]) -> None:
    """Gradients and figures equal to float rounding, weights to what Adam's first step makes of it."""
    (a, fa), (b, fb) = one, other
    for ga, gb in zip(grads(a), grads(b)):
        torch.testing.assert_close(gb, ga, **GRAD_TOL)
    lr = a.cfg.lr
    for pa, pb, ga, gb in zip(trained(a), trained(b), grads(a), grads(b)):
        assert bool(((pa - pb).abs() <= adam_first_step_spread(ga, gb, lr) + 1e-6).all())  # 1e-6: the weights' rounding
    assert fa.keys() == fb.keys() and fa.keys() <= set(FIGURES)
    for key in fa:
        assert fb[key] == pytest.approx(fa[key], rel=1e-5, abs=1e-7), key


# -- the pure parts -------------------------------------------------------------------------------


def test_micro_steps_cover_pairs_then_reference_samples():
    assert micro_steps(8, 0, None) == [(slice(0, 8), None)]
    assert micro_steps(8, 5, None) == [(slice(0, 8), slice(0, 5))]  # one backward, as without micro-batches
    assert micro_steps(8, 5, 3) == [(slice(0, 3), None), (slice(3, 6), None), (slice(6, 8), None), (None, slice(0, 5))]
    assert micro_steps(3, 5, 1) == [(slice(i, i + 1), None) for i in range(3)] + [(None, slice(0, 2)), (None, slice(2, 4)), (None, slice(4, 5))]
    assert micro_steps(4, 0, 10) == [(slice(0, 4), None)]


@pytest.mark.parametrize("valid", [[True, False, True, True, False, True, True], [False] * 7, [True] * 7])
def test_weighted_micro_batch_means_add_up_to_the_masked_mean(valid):
    losses = torch.linspace(0.1, 2.0, 7)
    valid = torch.tensor(valid)
    whole = masked_mean(losses, valid)
    assert valid_share(valid, valid).item() == 1.0  # the whole batch: exactly today's loss
    parts = sum(masked_mean(losses[s], valid[s]) * valid_share(valid[s], valid) for s in (slice(0, 3), slice(3, 6), slice(6, 7)))
    torch.testing.assert_close(parts, whole)


def test_logit_blocks_cover_each_position_once_within_the_size():
    for batch, time, vocab, size in [(3, 7, 50, 1), (3, 7, 50, 150), (3, 7, 50, 700), (3, 7, 50, 10**9), (2, 0, 50, 100)]:
        seen = torch.zeros(batch, time, dtype=torch.int)
        for b, t in logit_blocks(batch, time, vocab, size):
            block = seen[b, t]
            assert block.numel() * vocab <= max(size, vocab)
            seen[b, t] += 1
        assert bool((seen == 1).all())


# -- blocked log-probs ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block", [1, 150, 700, policy.LOGPROB_BLOCK])  # a position, runs of one row, rows, all
def test_blocked_token_logprobs_equal_log_softmax_gather(dtype, block):
    torch.manual_seed(0)
    logits = (3 * torch.randn(3, 8, 50)).to(dtype)[:, :-1].requires_grad_()  # a view, as sequence_logprobs passes
    targets = torch.randint(0, 50, (3, 7))
    weights = torch.randn(3, 7)
    reference = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    (expected,) = torch.autograd.grad((reference * weights).sum(), logits)
    got = token_logprobs(logits, targets, block)
    (grad,) = torch.autograd.grad((got * weights).sum(), logits)
    assert got.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(got, reference, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, expected, rtol=1e-6, atol=1e-6)
    if block == policy.LOGPROB_BLOCK:  # one block: the very numbers of the unblocked formula
        assert torch.equal(got, block_logprobs(logits, targets)) and torch.equal(grad, expected)


def test_skipping_the_prompt_logits_keeps_the_log_probs(tokenizer, pairs, monkeypatch):
    """Below a block the learner scores every position (as the golden runs pin); above, the logits
    before the shortest prompt's last token are not computed, for the same log-probs and gradients."""
    model = tiny_gpt2(tokenizer).eval()
    prompts, responses = pairs.prompts * 2, pairs.chosen + pairs.rejected
    mask = policy.encode_pairs(tokenizer, prompts, responses)["response_mask"]
    shortest = int(mask.int().argmax(-1).min())
    assert policy.first_scored_position(mask, len(tokenizer)) == 0  # tiny: the saving is below a block
    assert policy.first_scored_position(mask, len(tokenizer), block=1) == shortest - 1
    calls = []
    model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs.get("logits_to_keep")), with_kwargs=True)
    first_scored, results = policy.first_scored_position, []
    for block in (policy.LOGPROB_BLOCK, 1):
        monkeypatch.setattr(policy, "first_scored_position", lambda mask, vocab, block=block: first_scored(mask, vocab, block))
        model.zero_grad()
        logp, lengths = sequence_logprobs(model, tokenizer, prompts, responses)
        (logp * torch.linspace(-1, 1, len(logp))).sum().backward()
        results.append((logp.detach(), lengths, [p.grad.clone() for p in model.parameters()]))
    width = mask.shape[1]
    assert calls == [None, width - shortest + 1]
    (logp, lengths, grad), (skipped, skipped_lengths, skipped_grad) = results
    assert torch.equal(lengths, skipped_lengths)
    torch.testing.assert_close(skipped, logp, rtol=1e-6, atol=1e-5)
    for a, b in zip(grad, skipped_grad):
        torch.testing.assert_close(b, a, **GRAD_TOL)


# -- micro-batches --------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["dpo", "simpo"])
@pytest.mark.parametrize("micro", [1, 3])
def test_micro_batches_give_the_one_batch_step(tokenizer, pairs, loss, micro):
    model = tiny_gpt2(tokenizer)
    assert_same_step(stepped(model, tokenizer, pairs, loss=loss), stepped(model, tokenizer, pairs, loss=loss, micro_batch_size=micro))


@pytest.mark.parametrize("micro", [1, 3])
def test_micro_batches_accumulate_xpo_optimism(tokenizer, pairs, reference_samples, micro):
    model = tiny_gpt2(tokenizer)
    one = stepped(model, tokenizer, pairs, reference_samples, optimism=0.5)
    assert "optimism_logp" in one[1]
    assert_same_step(one, stepped(model, tokenizer, pairs, reference_samples, optimism=0.5, micro_batch_size=micro))


def test_all_ties_move_nothing_in_micro_batches(tokenizer, pairs):
    model = tiny_gpt2(tokenizer)
    ties = Preferences(pairs.prompts, pairs.chosen, pairs.chosen)
    learner, figures = stepped(model, tokenizer, ties, micro_batch_size=3)
    assert figures["valid_pairs"] == 0 and figures["loss"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), learner.model.parameters()))


def test_default_is_the_one_batch_computation(tokenizer, pairs, reference_samples):
    """No micro-batch size: one forward and one backward of everything, bit for bit as before (the
    golden runs pin this); a micro-batch as large as the batch is the same step."""
    model = tiny_gpt2(tokenizer)
    one, whole = stepped(model, tokenizer, pairs, reference_samples, optimism=0.5), stepped(model, tokenizer, pairs, micro_batch_size=8)
    learner, figures = one
    prompts, responses = pairs.prompts * 2, pairs.chosen + pairs.rejected
    fresh = copy.deepcopy(model).eval()
    with torch.no_grad():
        ref, _ = sequence_logprobs(fresh, tokenizer, prompts, responses)
    pi, _ = sequence_logprobs(fresh, tokenizer, prompts, responses)
    n = len(pairs)
    dpo = masked_mean(losses.dpo(pi[:n], pi[n:], ref[:n], ref[n:], 0.1), pairs.valid)
    optimism, _ = sequence_logprobs(fresh, tokenizer, *reference_samples)
    (dpo + 0.5 * optimism.mean()).backward()
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(fresh.parameters(), learner.model.parameters()))
    assert figures["loss"] == (dpo + 0.5 * optimism.mean()).item()
    assert whole[1]["loss"] == stepped(model, tokenizer, pairs)[1]["loss"]


# -- gradient checkpointing -----------------------------------------------------------------------


def saved_for_backward(learner: Learner, batch: Preferences) -> int:
    """Bytes autograd keeps from the forward passes of one step (those checkpointed layers drop)."""
    saved = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        learner.step(batch)
    return sum(saved)


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama])
@pytest.mark.parametrize("micro", [None, 3])
def test_gradient_checkpointing_gives_the_same_step_with_less_kept(tokenizer, pairs, build, micro):
    model = build(tokenizer)
    plain = stepped(model, tokenizer, pairs, micro_batch_size=micro)
    checkpointed = stepped(model, tokenizer, pairs, micro_batch_size=micro, gradient_checkpointing=True)
    assert_same_step(plain, checkpointed)
    layers = checkpointed[0].checkpointed
    assert len(layers) == 2 and all("forward" not in layer.__dict__ for layer in layers)  # unwrapped after the step
    kept = saved_for_backward(learner_for(model, tokenizer, micro_batch_size=micro, gradient_checkpointing=True), pairs)
    assert kept < 0.7 * saved_for_backward(learner_for(model, tokenizer, micro_batch_size=micro), pairs)


def test_gradient_checkpointing_through_lora_adapters(tokenizer, pairs):
    pytest.importorskip("peft")
    from sealign.models import add_lora

    model = add_lora(tiny_gpt2(tokenizer), rank=4, alpha=8.0)
    for p in model.parameters():  # peft starts B at zero, where the adapters' A gets no gradient
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.02)
    plain = stepped(model, tokenizer, pairs, micro_batch_size=3)
    checkpointed = stepped(model, tokenizer, pairs, micro_batch_size=3, gradient_checkpointing=True)
    adapters = trained(checkpointed[0])
    assert adapters and all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapters)
    assert_same_step(plain, checkpointed)


def test_a_model_without_checkpointable_layers_is_refused(tokenizer):
    from sealign.errors import SealignError

    with pytest.raises(SealignError, match="--gradient-checkpointing"):
        learner_for(torch.nn.Linear(2, 2), tokenizer, gradient_checkpointing=True)


def test_bad_micro_batch_size_is_one_error_line(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--micro-batch-size", "0", "--out", str(tmp_path / "run"))
    assert_one_error_line(code, err, "--micro-batch-size must be at least 1, got 0")
    assert not (tmp_path / "run").exists()


def test_train_help_shows_the_memory_options(capsys):
    from sealign.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "--micro-batch-size MICRO_BATCH_SIZE" in text and "--gradient-checkpointing" in text
