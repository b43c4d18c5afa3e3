"""The policy pi_theta (actor side): any transformers causal LM, built, loaded and sampled.

The same functions drive the tiny built-in GPT-2 and a Pythia or Llama checkpoint.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedModel
from transformers.cache_utils import DynamicLayer
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from sealign.config import PolicyConfig
from sealign.data import messages_of
from sealign.errors import SealignError


def build_policy(cfg: PolicyConfig, tokenizer: PreTrainedTokenizerBase, max_positions: int = 64) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2 of the configured size over the tokenizer's vocabulary."""
    n_embd, n_layer, n_head = cfg.dims
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=max_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # No dropout: preference losses compare log-probs of the policy and pi_ref, which must
        # be deterministic functions of the weights; the data stream is fresh every step anyway.
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config)


def load_policy(
    path: str | Path, device: str = "cpu", dtype: str = "float32", chat_template: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a local folder or a hub name.

    With `chat_template`, every prompt reaches the model as a user turn of the tokenizer's chat
    template (see `prompt_inputs`); the prompt texts themselves stay raw for the oracle."""
    path = Path(path)
    if not path.exists() and (path.is_absolute() or str(path).startswith(".")):
        raise SealignError(f"policy path {str(path)!r} does not exist")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype)).to(device)
    except (OSError, ValueError) as e:
        raise SealignError(f"cannot load policy {str(path)!r}: {str(e).splitlines()[0]}") from None
    if chat_template and not getattr(tokenizer, "chat_template", None):
        raise SealignError(f"--chat-template: the tokenizer of {str(path)!r} has no chat template")
    prepare_tokenizer(tokenizer)
    tokenizer.sealign_chat = chat_template
    model.eval()
    return model, tokenizer


def prompt_inputs(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> tuple[list[str], bool]:
    """The texts the policy reads for `prompts`, and whether to add the tokenizer's special tokens
    (a chat template writes its own). Through the template, a chat-format prompt is its whole
    conversation, a plain one a user turn."""
    if not getattr(tokenizer, "sealign_chat", False):
        return list(prompts), True
    texts = [
        tokenizer.apply_chat_template(messages_of(x) or [{"role": "user", "content": x}], tokenize=False, add_generation_prompt=True)
        for x in prompts
    ]
    return texts, False


def prompt_lengths(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> list[int]:
    """Tokens the policy reads for each prompt (chat template included)."""
    texts, special = prompt_inputs(tokenizer, prompts)
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=special)["input_ids"]]


def check_fits(model: PreTrainedModel, longest_prompt: int, max_new_tokens: int) -> None:
    """Refuse, before any work, a prompt that with `max_new_tokens` exceeds the model's positions."""
    need = longest_prompt + max_new_tokens
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if limit is not None and need > limit:
        raise SealignError(
            f"a prompt plus {max_new_tokens} new tokens needs {need} positions; the policy has {limit} "
            "(lower --max-new-tokens or set --max-prompt-tokens)"
        )


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    """Left padding for batched generation, and a pad token where the checkpoint has none (GPT-2, Pythia)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def num_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    num_samples: int = 1,
    greedy: bool = False,
    temperature: float = 0.7,
    max_new_tokens: int = 32,
    batch_size: int = 256,
    generator_seed: int | None = None,
) -> list[list[str]]:
    """Sample `num_samples` responses per prompt (KV-cached, batched); returns texts, shape (P, num_samples).

    Sampling is pure temperature sampling (no top-k / top-p truncation), so the candidates are
    draws from pi_theta itself, as Thompson sampling over them assumes (§4.3).
    """
    if greedy and num_samples != 1:
        raise ValueError("greedy decoding yields one response per prompt")
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    was_training = model.training
    model.eval()
    out: list[list[str]] = []
    for start in range(0, len(prompts), batch_size):
        chunk, special = prompt_inputs(tokenizer, prompts[start : start + batch_size])
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=special).to(model.device)
        sampling = {} if greedy else {"temperature": temperature, "top_k": 0, "top_p": 1.0}
        inputs = shared_prompt_inputs(model, enc, num_samples, max_new_tokens) if num_samples > 1 else dict(enc)
        ids = model.generate(
            **inputs,
            do_sample=not greedy,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **sampling,
        )  # (B * num_samples, prompt_len + new)
        # No stripping: a BPE response keeps its leading space, so re-tokenizing it for the learner
        # gives back the tokens the policy sampled.
        texts = tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        out.extend(texts[i : i + num_samples] for i in range(0, len(texts), num_samples))
    model.train(was_training)
    return out


def shared_prompt_inputs(model: PreTrainedModel, enc: dict[str, torch.Tensor], num_samples: int, room: int) -> dict:
    """Generation inputs for `num_samples` samples per prompt whose prompt is encoded only once.

    `generate(num_return_sequences=M)` copies every prompt M times and runs the prompt through
    the model M times. Here all but the last prompt token go through once, their key/value cache
    is repeated M times per prompt, and generate continues from it: the M copies of a prompt
    share one prefill (with M = 20 candidates, most of sampling's cost). Positions are those
    generate derives from the left-padded attention mask; rows stay prompt-major, as
    num_return_sequences orders them. The cache keeps `room` free positions per layer for the
    tokens generate appends (`PreallocatedLayer`). `enc`: `input_ids`, `attention_mask`, each (B, T).
    """
    ids, mask = enc["input_ids"], enc["attention_mask"]  # (B, T)
    repeat = {k: v.repeat_interleave(num_samples, dim=0) for k, v in enc.items()}  # (B * M, T)
    if ids.shape[1] < 2:  # nothing to share before the last token
        return repeat
    _, cache, cache_key = prefill(model, ids[:, :-1], mask[:, :-1])  # only the cache is wanted
    cache.batch_repeat_interleave(num_samples)  # (B * M) rows, prompt-major
    layers = getattr(cache, "layers", [])
    for i, layer in enumerate(layers):
        if type(layer) is DynamicLayer and layer.is_initialized:  # sliding-window and other layers keep their own
            layers[i] = PreallocatedLayer(layer.keys, layer.values, room)
    return {**repeat, cache_key: cache}


class PreallocatedLayer(DynamicLayer):
    """A DynamicLayer whose keys and values live in buffers with room for the tokens still to come.

    DynamicLayer appends each generated token by concatenation, copying the whole cache of every
    layer once per token; with M = 20 candidates per prompt that copy was about a fifth of
    sampling's time. Here a token is written into the free room and the layer exposes a view of
    the filled part, so the attention sees the very same keys and values (same samples, same
    seed). When the room runs out the buffers grow, as a DynamicLayer would.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, room: int):
        super().__init__()
        self.lazy_initialization(keys, values)
        self.room = max(1, room)
        self._keys, self._values = self._with_room(keys), self._with_room(values)  # (B, H, T + room, D)
        self.keys, self.values = self._keys[..., : keys.shape[-2], :], self._values[..., : keys.shape[-2], :]

    def _with_room(self, filled: torch.Tensor) -> torch.Tensor:
        shape = (*filled.shape[:-2], filled.shape[-2] + self.room, filled.shape[-1])
        buffer = filled.new_empty(shape)
        buffer[..., : filled.shape[-2], :] = filled
        return buffer

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:  # after reset(): start as a DynamicLayer, take room at the next token
            return super().update(key_states, value_states)
        n, new = self.keys.shape[-2], key_states.shape[-2]
        views_buffer = (self.keys.data_ptr(), self.keys.stride(), self.keys.shape[:-2]) == (
            self._keys.data_ptr(), self._keys.stride(), self._keys.shape[:-2]
        )
        if not views_buffer or n + new > self._keys.shape[-2]:
            # out of room, or the rows were reordered, selected or moved: new buffers around them
            self.room = max(self.room, new)
            self._keys, self._values = self._with_room(self.keys), self._with_room(self.values)
        self._keys[..., n : n + new, :] = key_states
        self._values[..., n : n + new, :] = value_states
        self.keys, self.values = self._keys[..., : n + new, :], self._values[..., : n + new, :]
        return self.keys, self.values


def prefill(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor) -> tuple:
    """Run left-padded prompts `ids`, `mask` (B, T) through a decoder once and keep their key/value
    cache, with the positions generate would give them; an LM head scores only the last position
    (what follows the prompt), not all T. Returns (output, cache, the name under which forward
    takes a cache: `past_key_values`, renamed `cache` within transformers 5)."""
    accepts = inspect.signature(model.forward).parameters
    cache_key = "cache" if "cache" in accepts else "past_key_values"
    inputs = {"input_ids": ids, "attention_mask": mask, "use_cache": True}
    if "position_ids" in accepts:
        inputs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
    if "logits_to_keep" in accepts:
        inputs["logits_to_keep"] = 1
    out = model(**inputs)
    return out, out[cache_key], cache_key


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], responses: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Tokenize prompt + response + <eos>, right-padded, with a mask of the response tokens.

    Returns `input_ids`, `attention_mask` and `response_mask`, each (B, T). The prompt is
    encoded as at generation time (`prompt_inputs`), the response without special tokens.
    """
    texts, special = prompt_inputs(tokenizer, prompts)
    prompt_ids = tokenizer(texts, add_special_tokens=special)["input_ids"]
    response_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    rows = [(p, [*r, tokenizer.eos_token_id]) for p, r in zip(prompt_ids, response_ids)]
    width = max(len(p) + len(r) for p, r in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    response_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (p, r) in enumerate(rows):
        n = len(p) + len(r)
        input_ids[i, :n] = torch.tensor(p + r)
        attention_mask[i, :n] = 1
        response_mask[i, len(p) : n] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}


# Logits that `token_logprobs` upcasts and normalises at once: 64 MiB in fp32, next to the
# (B, T, V) logits themselves (256 sequences x 512 tokens of a 50k vocabulary: 12 GiB in bf16).
LOGPROB_BLOCK = 2**24


def sequence_logprobs(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], responses: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(y | x) summed over the response tokens (+ <eos>), and the response lengths; both (B,).

    Prompt and padding positions are masked; gradients flow when the model is in grad mode.
    transformers' key/value cache is not built, and logits only predicting prompt tokens are
    skipped where that saves much (`first_scored_position`).
    """
    batch = encode_pairs(tokenizer, prompts, responses)
    batch = {k: v.to(model.device) for k, v in batch.items()}
    ids, response = batch["input_ids"], batch["response_mask"]  # (B, T)
    inputs = {"input_ids": ids, "attention_mask": batch["attention_mask"], "use_cache": False}
    start = first_scored_position(response, len(tokenizer)) if _accepts(model, "logits_to_keep") else 0
    if start:
        inputs["logits_to_keep"] = ids.shape[1] - start  # the last T - start positions
    logits = model(**inputs).logits  # (B, T - start, V): positions start..T-1
    token_logp = token_logprobs(logits[:, :-1], ids[:, start + 1 :])  # (B, T-1-start): tokens start+1..T-1
    # back to all T-1 tokens, zeros first: the sums below then add the same numbers in the same order
    token_logp = torch.nn.functional.pad(token_logp, (start, 0))  # (B, T-1)
    mask = response[:, 1:]  # (B, T-1)
    return (token_logp * mask).sum(-1), mask.sum(-1)


def first_scored_position(response_mask: torch.Tensor, vocab: int, block: int = LOGPROB_BLOCK) -> int:
    """The first position whose next-token logits to compute: the shortest prompt's last token
    (earlier ones only predict prompt tokens), if the logits skipped would fill a `block`; else 0.

    Skipping changes the rounding of the LM head's weight gradient (a shorter sum); below a block
    the saving is small, and the full product keeps the rounding that tests/golden pins.
    `response_mask`: (B, T), True on response tokens."""
    start = max(int(response_mask.int().argmax(-1).min()) - 1, 0)
    return start if start * response_mask.shape[0] * vocab >= block else 0


def _accepts(model: torch.nn.Module, argument: str) -> bool:
    """Whether the model's forward (under a peft wrapper, its base model's) takes `argument`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return argument in inspect.signature(base.forward).parameters


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, block: int = LOGPROB_BLOCK) -> torch.Tensor:
    """log p(target_t) under the next-token `logits` (B, T, V) at each position; shape (B, T), fp32.

    Computed `block` logits at a time, in forward and again in backward: no fp32 (B, T, V) copy
    (upcast or log-softmax) is kept, only the logits. One block (any batch under 64 MiB of logits)
    gives the very numbers of the unblocked formula, `block_logprobs`."""
    return _BlockedLogprobs.apply(logits, targets, block)


def block_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits).gather(targets) in fp32, for one block: (b, t, V), (b, t) -> (b, t)."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None]).squeeze(-1)


def logit_blocks(batch: int, time: int, vocab: int, size: int) -> list[tuple[slice, slice]]:
    """(batch, time) slices that cover (batch, time, vocab) logits with at most `size` each (one
    position at least): whole sequences while one fits, else runs of one sequence's positions."""
    positions = max(1, size // vocab)
    if positions >= time:
        rows = positions // max(time, 1)
        return [(slice(b, b + rows), slice(None)) for b in range(0, batch, rows)]
    return [(slice(b, b + 1), slice(t, t + positions)) for b in range(batch) for t in range(0, time, positions)]


class _BlockedLogprobs(torch.autograd.Function):
    """`block_logprobs` over blocks of the logits; backward recomputes each block's log-softmax
    (cheap next to the model) and writes its gradient into one tensor of the logits' dtype."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, block: int) -> torch.Tensor:
        ctx.save_for_backward(logits, targets)
        ctx.block = block
        out = torch.empty(targets.shape, dtype=torch.float32, device=logits.device)  # (B, T)
        for index in logit_blocks(*logits.shape, block):
            out[index] = block_logprobs(logits[index], targets[index])
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        logits, targets = ctx.saved_tensors
        grad_logits = torch.empty_like(logits)  # (B, T, V)
        for index in logit_blocks(*logits.shape, ctx.block):
            with torch.enable_grad():
                part = logits[index].detach().requires_grad_()
                (grad_logits[index],) = torch.autograd.grad(block_logprobs(part, targets[index]), part, grad[index])
        return grad_logits, None, None
