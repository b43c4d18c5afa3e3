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


def test_shared_prompt_prefill_samples_what_generate_samples(task):
    """Sampling M responses from one prefill per prompt draws the same responses, in the same
    prompt-major order, as transformers' generate copying every prompt M times (same seed)."""
    tokenizer = task.build_tokenizer()
    torch.manual_seed(0)
    model = build_policy(TINY, tokenizer).eval()
    prompts = [r.prompt for r in task.records("holdout")[:5]]  # different lengths: left padding
    shared = generate(model, tokenizer, prompts, num_samples=4, temperature=1.0, max_new_tokens=6, generator_seed=1)
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    torch.manual_seed(1)
    ids = model.generate(
        **enc, do_sample=True, num_return_sequences=4, max_new_tokens=6, temperature=1.0, top_k=0, top_p=1.0,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    texts = tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert shared == [texts[i : i + 4] for i in range(0, len(texts), 4)]
    assert len({t for row in shared for t in row}) > 5  # a real test: the samples differ


def test_preallocated_cache_layer_holds_what_a_dynamic_layer_holds():
    """Appending into preallocated room (sampling's key/value cache) gives the same keys and values
    as DynamicLayer's concatenation: past its room, after rows are selected or reordered, after a
    crop, and after a reset."""
    from transformers.cache_utils import DynamicLayer

    from sealign.policy import PreallocatedLayer

    g = torch.Generator().manual_seed(0)
    kv = lambda rows, t: (torch.randn(rows, 2, t, 3, generator=g), torch.randn(rows, 2, t, 3, generator=g))  # noqa: E731
    keys, values = kv(4, 5)
    grown, plain = PreallocatedLayer(keys, values, room=2), DynamicLayer()
    plain.update(keys, values)
    steps = [
        lambda layer: None,
        lambda layer: None,
        lambda layer: None,  # the third token is past the room of 2
        lambda layer: layer.batch_select_indices(torch.tensor([2, 0, 1, 3])),
        lambda layer: layer.batch_select_indices(slice(0, 3)),  # a view that starts where the buffer does
        lambda layer: layer.crop(-2),
        lambda layer: layer.reset(),
        lambda layer: None,
    ]
    for i, before in enumerate(steps):
        for layer in (grown, plain):
            before(layer)
        rows = grown.keys.shape[0] if grown.is_initialized else 3
        new = kv(rows, 2 if i == 6 else 1)  # after the reset, two tokens at once
        out, ref = grown.update(*new), plain.update(*new)
        assert all(torch.equal(a, b) for a, b in zip(out, ref)), f"step {i}"
        assert grown.get_seq_length() == plain.get_seq_length()
    assert grown.get_seq_length() == 3  # the reset emptied both: two tokens, then one


def test_sampling_with_candidates_appends_into_preallocated_room(task):
    """The speed-up is there: a decoder's shared prompt cache gets PreallocatedLayers with room for
    every new token (if transformers changed its layers, this would fail rather than slow down)."""
    from sealign.policy import PreallocatedLayer, shared_prompt_inputs

    tokenizer = task.build_tokenizer()
    model = build_policy(TINY, tokenizer).eval()
    enc = tokenizer([r.prompt for r in task.records("holdout")[:2]], return_tensors="pt", padding=True)
    cache = next(v for k, v in shared_prompt_inputs(model, dict(enc), 3, room=5).items() if k in ("cache", "past_key_values"))
    assert cache.layers and all(type(layer) is PreallocatedLayer for layer in cache.layers)
    assert all(layer.keys.shape[0] == 6 and layer._keys.shape[-2] == enc["input_ids"].shape[1] - 1 + 5 for layer in cache.layers)
