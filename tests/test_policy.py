"""Policy helpers: response log-probs with prompt and padding masked, grouped sampling."""

from __future__ import annotations

import torch

from conftest import TINY
from sealign.policy import build_policy, generate, sequence_logprobs


def _manual_logprob(model, tokenizer, prompt: str, response: str) -> float:
    """log pi(response + <eos> | prompt), token by token, with no batching or padding."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([prompt_ids + response_ids])
    logp = torch.log_softmax(model(input_ids=ids).logits[0], dim=-1)  # (T, V)
    return sum(logp[len(prompt_ids) - 1 + i, tok].item() for i, tok in enumerate(response_ids))


def test_sequence_logprobs_mask_prompt_and_padding(task):
    torch.manual_seed(0)
    tokenizer = task.build_tokenizer()
    model = build_policy(TINY, tokenizer).eval()
    records = task.records("holdout")[:3]
    prompts = [r.prompt for r in records]
    responses = ["apple", records[1].reference, "river garden music piano"]  # different lengths: padding
    with torch.no_grad():
        logp, lengths = sequence_logprobs(model, tokenizer, prompts, responses)
        manual = [_manual_logprob(model, tokenizer, p, r) for p, r in zip(prompts, responses)]
    assert torch.allclose(logp, torch.tensor(manual), atol=1e-4)
    assert lengths.tolist() == [len(r.split()) + 1 for r in responses]  # words + <eos>


def test_samples_are_grouped_by_prompt(task):
    """generate returns (P, M) texts; with near-zero temperature every sample of a prompt is its greedy answer."""
    torch.manual_seed(0)
    tokenizer = task.build_tokenizer()
    model = build_policy(TINY, tokenizer)
    prompts = [r.prompt for r in task.records("holdout")[:3]]
    out = generate(model, tokenizer, prompts, num_samples=4, max_new_tokens=3, generator_seed=0)
    assert [len(row) for row in out] == [4, 4, 4]
    cold = generate(model, tokenizer, prompts, num_samples=4, temperature=1e-6, max_new_tokens=3, generator_seed=0)
    greedy = generate(model, tokenizer, prompts, greedy=True, max_new_tokens=3)
    assert cold == [row * 4 for row in greedy]
