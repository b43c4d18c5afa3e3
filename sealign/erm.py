"""The epistemic reward model (ERM, paper §4.2): K MLP heads on features of a frozen transformer.

The ensemble stands in for the reward posterior p(r | D): posterior sampling is picking one
head at random. Each head is trained on the oracle's labels with the Bradley–Terry loss plus a
pull towards *its own* initial weights (Eq. 9), which keeps the heads apart where data is
scarce and lets the data win where it is plentiful.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

from sealign.config import ERMConfig
from sealign.errors import SealignError
from sealign.policy import encode_pairs, prefill, prepare_tokenizer, prompt_inputs, token_logprobs

POOLINGS = ("mean", "sum", "last")  # and "tokens", which pools nothing: see `Backbone`


def pool(hidden: Tensor, mask: Tensor, how: str) -> Tensor:
    """Pool hidden states (B, T, d) over the positions in `mask` (B, T) into features (B, d)."""
    m = mask.to(hidden.dtype)[:, :, None]  # (B, T, 1)
    if how == "sum":
        return (hidden * m).sum(1)
    if how == "mean":
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    if how == "last":
        last = mask.long().cumsum(1).argmax(1)  # (B,) index of the last masked position
        return hidden[torch.arange(len(hidden)), last]
    raise ValueError(f"unknown pooling {how!r} (known: {', '.join(POOLINGS)})")


def per_token(x: Tensor, mask: Tensor, tokens: int) -> Tensor:
    """Features of each response token, unpooled: the positions of `mask` (B, T) in `x` (B, T, d),
    in order, cut or zero-padded to `tokens` and flattened with a mask column per token into
    (B, tokens * (d + 1)), so that one response is still one row (the buffer, the explorer and
    the checkpoints carry it unchanged) and `ensemble_rewards` can read it back per token."""
    order = torch.argsort((~mask).int(), dim=1, stable=True)[:, :tokens]  # response positions first
    x = torch.gather(x, 1, order[..., None].expand(-1, -1, x.shape[-1]))
    m = torch.gather(mask, 1, order).to(x.dtype)[..., None]  # (B, ≤tokens, 1)
    rows = F.pad(torch.cat([x * m, m], -1), (0, 0, 0, tokens - x.shape[1]))  # (B, tokens, d + 1)
    return rows.flatten(1)


def grounding(embeddings: Tensor, ids: Tensor, mask: Tensor, prompt_ids: Tensor, prompt_mask: Tensor) -> Tensor:
    """Per token of `ids` (B, T), the largest cosine similarity of its input embedding to those of
    the prompt's tokens (`prompt_ids` (B, Tp) where `prompt_mask`) and to those of the earlier
    tokens in `mask` (B, T): BERTScore's greedy matching, read as how closely a response token is
    copied from the prompt and whether it repeats one before it. -1 where there is nothing to
    match. `embeddings` (V, d) is the backbone's input embedding table; returns (B, T, 2)."""
    y, x = (F.normalize(embeddings[i].float(), dim=-1) for i in (ids, prompt_ids))  # (B, T, d), (B, Tp, d): only the rows read
    to_prompt = (y @ x.transpose(1, 2)).masked_fill(~prompt_mask[:, None, :], -1.0).amax(-1)
    before = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool, device=ids.device).tril(-1)  # j < i
    to_earlier = (y @ y.transpose(1, 2)).masked_fill(~(before & mask[:, None, :]), -1.0).amax(-1)
    return torch.stack([to_prompt, to_earlier], -1)


class Reading(NamedTuple):
    """What a backbone's pass over (prompt, response) pairs yields: hidden states at the chosen
    layer (b, T, d), log-probs of each token given those before it (b, T; None unless asked),
    the response mask (b, T), the token ids at those positions (b, T), and each pair's prompt ids
    (b, Tp) with their mask (b, Tp)."""

    hidden: Tensor
    logp: Tensor | None
    mask: Tensor
    ids: Tensor
    prompt_ids: Tensor
    prompt_mask: Tensor


def token_logprob_stats(logp: Tensor, mask: Tensor) -> Tensor:
    """Sum, mean and min of per-token log-probs `logp` (B, T) over the positions in `mask` (B, T);
    returns (B, 3)."""
    total = (logp * mask).sum(1)
    return torch.stack([total, total / mask.sum(1).clamp(min=1), logp.masked_fill(~mask, math.inf).min(1).values], 1)


def is_decoder(model: PreTrainedModel) -> bool:
    """Causal (decoder-only) architectures: a token's states depend only on the tokens before it,
    so a prompt read once can serve all its responses. An architecture with a masked-LM head
    (BERT, RoBERTa, DeBERTa reward models) reads in both directions."""
    kind = model.config.model_type
    return kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


class Backbone:
    """A frozen transformer whose hidden states at one layer (default: the last), pooled over the
    response, are the ERM's features φ(x, y). Any transformers model loads (its base, without the
    LM head); the feature width is read from its config.

    `logprobs` loads a causal LM instead and appends the sum, mean and min of its log-probs of
    the response tokens: how plausible the backbone finds each token *given the prompt*. Pooled
    hidden states of a small backbone barely encode such prompt-response agreement (on the
    built-in task, whether a summary word occurs in the post), which drives many preferences;
    benchmarks/erm_features.py measures the ERM's accuracy with and without them.

    Pooling "tokens" (beyond the paper) pools nothing: each head scores every response token
    and sums the scores, a form that can express a reward summed over words (the built-in
    task's), where an MLP on a pooled vector stalls (benchmarks/erm_token_heads.py). A response
    counts its first `tokens` tokens; the features of one response are `tokens` × (d + 1)
    numbers (with log-probs, each token's own log-prob is one of its d features). `grounding`
    appends to each token's features its two `grounding` similarities (copied from the prompt,
    repeated): a tiny backbone's states tell a copied word from a foreign one only faintly.
    """

    def __init__(
        self,
        path: str | Path,
        pooling: str = "mean",
        batch_size: int = 256,
        device: str = "cpu",
        *,
        layer: int = -1,
        logprobs: bool = False,
        tokens: int = 0,
        grounding: bool = False,
    ):
        try:
            auto = AutoModelForCausalLM if logprobs else AutoModel
            self.model = auto.from_pretrained(str(path)).to(device).eval().requires_grad_(False)
            self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError) as e:
            raise SealignError(f"cannot load ERM backbone {str(path)!r}: {str(e).splitlines()[0]}") from None
        prepare_tokenizer(self.tokenizer)
        layers = self.model.config.num_hidden_layers + 1  # the input embeddings, then every block
        if not -layers <= layer < layers:
            raise SealignError(f"--erm-layer {layer} is out of range: backbone {str(path)!r} has hidden states 0..{layers - 1}")
        if (pooling == "tokens") != (tokens > 0):
            raise ValueError("pooling 'tokens' takes the response length limit `tokens`, and only it does")
        if grounding and not tokens:
            raise ValueError("grounding features are per token: they need pooling 'tokens'")
        self.tokens = tokens
        self.grounding = grounding
        d = self.model.config.hidden_size
        # per token: states, log-prob, the two grounding similarities, mask
        self.width: int = tokens * (d + logprobs + 2 * grounding + 1) if tokens else d + 3 * logprobs
        self.pooling = pooling
        self.batch_size = batch_size
        self.layer = layer
        self.logprobs = logprobs

    @torch.no_grad()
    def features(self, prompts: Sequence[str], responses: Sequence[str]) -> Tensor:
        """φ(x, y) for each (prompt, response), shape (B, width); the response's <eos> is included.
        A decoder reads each distinct prompt of a batch of `batch_size` pairs once."""
        read = self._after_shared_prompt if is_decoder(self.model) else self._whole
        out = []
        for start in range(0, len(prompts), self.batch_size):
            r = read(prompts[start : start + self.batch_size], responses[start : start + self.batch_size])
            if self.tokens:
                parts = [r.hidden.float()] + ([] if r.logp is None else [r.logp[..., None].float()])
                if self.grounding:
                    table = self.model.get_input_embeddings().weight
                    parts.append(grounding(table, r.ids, r.mask, r.prompt_ids, r.prompt_mask))
                feats = per_token(torch.cat(parts, -1), r.mask, self.tokens)  # (b, width)
            else:
                feats = pool(r.hidden.float(), r.mask, self.pooling)  # (b, d)
                if self.logprobs:
                    feats = torch.cat([feats, token_logprob_stats(r.logp, r.mask)], 1)
            out.append(feats.cpu())  # the heads live on the CPU
        return torch.cat(out)

    def _whole(self, prompts: Sequence[str], responses: Sequence[str]) -> Reading:
        """Each prompt + response read whole (T: the longest of them); the prompt's positions are
        those before the response."""
        batch = {k: v.to(self.model.device) for k, v in encode_pairs(self.tokenizer, prompts, responses).items()}
        ids = batch["input_ids"]
        res = self.model(input_ids=ids, attention_mask=batch["attention_mask"], output_hidden_states=True)
        logp = None
        if self.logprobs:  # position 0, which nothing predicts, is never a response token
            logp = F.pad(token_logprobs(res.logits[:, :-1], ids[:, 1:]), (1, 0))
        mask = batch["response_mask"]
        return Reading(res.hidden_states[self.layer], logp, mask, ids, ids, batch["attention_mask"].bool() & ~mask)

    def _after_shared_prompt(self, prompts: Sequence[str], responses: Sequence[str]) -> Reading:
        """As `_whole`, over the response tokens only (T = longest response + <eos>), with each
        distinct prompt read once and its key/value cache shared by its responses: the prompts
        are most of the tokens, and the explorer scores M candidates per prompt."""
        tok, device = self.tokenizer, self.model.device
        distinct = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
        row = torch.tensor([distinct[p] for p in prompts], device=device)  # (b,) each pair's prompt
        texts, special = prompt_inputs(tok, list(distinct))
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=special).to(device)  # left-padded (P, Tp)
        head, cache, cache_key = prefill(self.model, enc["input_ids"], enc["attention_mask"])
        cache.batch_select_indices(row)  # (b) rows: each pair continues from its prompt
        ids = [[*r, tok.eos_token_id] for r in tok(list(responses), add_special_tokens=False)["input_ids"]]
        width = max(map(len, ids))
        mask = torch.tensor([[True] * len(r) + [False] * (width - len(r)) for r in ids], device=device)  # (b, T)
        ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in ids], device=device)  # (b, T)
        seen = enc["attention_mask"][row]  # (b, Tp)
        position = seen.sum(1, keepdim=True) + torch.arange(width, device=device)  # after each prompt's last token
        res = self.model(
            input_ids=ids,
            attention_mask=torch.cat([seen, mask.long()], 1),
            position_ids=position,
            output_hidden_states=True,
            **{cache_key: cache},
        )
        logp = None
        if self.logprobs:  # the prompt's last token predicts the first response token
            logp = token_logprobs(torch.cat([head.logits[row, -1:], res.logits[:, :-1]], 1), ids)  # (b, T)
        return Reading(res.hidden_states[self.layer], logp, mask, ids, enc["input_ids"][row], seen.bool())


# ---- the ensemble as pure functions of a parameter dict ----------------------------------


def init_heads(num_heads: int, width: int, hidden: int, generator: torch.Generator) -> dict[str, Tensor]:
    """K independent MLPs d → hidden → hidden → 1, stacked: w1 (K, d, h), b1 (K, h), ... w3 (K, h, 1).

    Each layer is drawn like torch.nn.Linear (uniform ±1/√fan_in) from `generator`, so every
    head starts somewhere else: that spread is the prior's epistemic uncertainty.
    """
    shapes = [(width, hidden), (hidden, hidden), (hidden, 1)]
    params = {}
    for i, (fan_in, fan_out) in enumerate(shapes, start=1):
        bound = 1.0 / math.sqrt(fan_in)
        params[f"w{i}"] = (torch.rand(num_heads, fan_in, fan_out, generator=generator) * 2 - 1) * bound
        params[f"b{i}"] = (torch.rand(num_heads, fan_out, generator=generator) * 2 - 1) * bound
    return params


def ensemble_rewards(params: dict[str, Tensor], features: Tensor, tokens: int = 0) -> Tensor:
    """r_φk(x, y) for every head k: features (N, d) shared by all heads, or (K, N, d) one set per
    head; returns (K, N). With `tokens` = T > 0 the features are `per_token` rows (d = T (d' + 1))
    and r_φk(x, y) = Σ_t mask_t g_k(token t), g_k the head's MLP on one token's d' features."""
    if not tokens:
        return head_mlp(params, features)
    x = features.unflatten(-1, (tokens, -1))  # (..., N, T, d' + 1)
    mask, rows = x[..., -1].flatten(-2), x[..., :-1].flatten(-3, -2)  # (..., N T), (..., N T, d')
    # only real tokens go through the heads (under half of the slots on the built-in task): each
    # row's real slots first, as many as the row with the most; the rest weigh 0
    keep = torch.sort(mask, dim=-1, descending=True, stable=True).indices[..., : int(mask.sum(-1).max())]
    picked = torch.gather(rows, -2, keep[..., None].expand(*keep.shape, rows.shape[-1]))  # (..., n, d')
    g = head_mlp(params, picked) * torch.gather(mask, -1, keep)  # (K, n)
    per_slot = g.new_zeros(len(g), mask.shape[-1]).scatter(-1, keep.expand_as(g), g)  # (K, N T)
    return per_slot.unflatten(-1, (-1, tokens)).sum(-1)  # (K, N)


def head_mlp(params: dict[str, Tensor], features: Tensor) -> Tensor:
    """Each head's MLP on features (N, d) shared by all heads, or (K, N, d); returns (K, N)."""
    spec = "nd,kdh->knh" if features.dim() == 2 else "knd,kdh->knh"
    h = torch.relu(torch.einsum(spec, features, params["w1"]) + params["b1"][:, None])  # (K, N, h)
    h = torch.relu(torch.einsum("knd,kdh->knh", h, params["w2"]) + params["b2"][:, None])  # (K, N, h)
    return (torch.einsum("knd,kdh->knh", h, params["w3"]) + params["b3"][:, None]).squeeze(-1)  # (K, N)


def bradley_terry_nll(chosen: Tensor, rejected: Tensor) -> Tensor:
    """L_r of Eq. 5 per head: mean over pairs of −log σ(r(x, y+) − r(x, y−)); inputs (K, N), output (K,)."""
    return -F.logsigmoid(chosen - rejected).mean(-1)


def anchor_penalty(params: dict[str, Tensor], init: dict[str, Tensor]) -> Tensor:
    """‖φ_k − φ_k⁰‖² per head, shape (K,): each head is pulled towards its own initial weights."""
    return sum((params[n] - init[n]).flatten(1).pow(2).sum(1) for n in params)


def erm_loss(
    params: dict[str, Tensor], init: dict[str, Tensor], chosen: Tensor, rejected: Tensor, lam: float, num_data: int,
    tokens: int = 0,
) -> Tensor:  # fmt: skip
    """Eq. 9 on a minibatch: Σ_k [ L_r(φ_k) + (λ / |D|) ‖φ_k − φ_k⁰‖² ].

    The paper prints "− λ‖φ − φ⁰‖"; a regularizer that keeps heads near their priors must be
    added, and squared as in Dwaracherla et al. (2020). Dividing λ by the number of labelled pairs
    |D| makes the minibatch mean an unbiased estimate of the full-data objective / |D|, so the
    prior's weight fades as labels accumulate. `chosen`, `rejected`: features (K, B, d), per
    token where `tokens` > 0 (see `ensemble_rewards`).
    """
    nll = bradley_terry_nll(ensemble_rewards(params, chosen, tokens), ensemble_rewards(params, rejected, tokens))  # (K,)
    return (nll + lam / num_data * anchor_penalty(params, init)).sum()


# ---- the stateful model: parameters, optimizer, the labelled buffer ------------------------


class EpistemicRewardModel:
    """The ensemble R_Φ with its optimizer and the buffer D of oracle-labelled feature pairs.

    Features are computed once per response (by `Backbone`) and kept with the pair, so a
    training round touches only the small MLPs. `tokens` > 0: the features are per token
    (`Backbone` with pooling "tokens") and each head's MLP reads one token's.
    """

    def __init__(self, width: int, cfg: ERMConfig, seed: int, tokens: int = 0):
        self.cfg = cfg
        self.tokens = tokens
        self.generator = torch.Generator().manual_seed(seed)
        init = init_heads(cfg.erm_heads, width // tokens - 1 if tokens else width, cfg.erm_hidden, self.generator)
        self.init = {n: t.clone() for n, t in init.items()}  # φ⁰, frozen
        self.params = {n: t.requires_grad_(True) for n, t in init.items()}
        self.optimizer = torch.optim.Adam(self.params.values(), lr=cfg.erm_lr)
        self.chosen = torch.empty(0, width)  # (|D|, d)
        self.rejected = torch.empty(0, width)  # (|D|, d)

    def __len__(self) -> int:
        return len(self.chosen)

    @torch.no_grad()
    def rewards(self, features: Tensor) -> Tensor:
        """(..., d) features → (K, ...) rewards, one row per head (posterior sample)."""
        lead = features.shape[:-1]
        return ensemble_rewards(self.params, features.reshape(-1, features.shape[-1]), self.tokens).reshape(-1, *lead)

    def add(self, chosen: Tensor, rejected: Tensor) -> None:
        """Append oracle-labelled pairs (features (n, d) each) to D."""
        self.chosen = torch.cat([self.chosen, chosen.float()])
        self.rejected = torch.cat([self.rejected, rejected.float()])

    def train_round(self) -> float:
        """`erm_sgd_steps` Adam steps of Eq. 9, each head on its own random minibatch of D; returns the
        mean loss per head of the last step (nan while D is empty)."""
        n = len(self)
        if n == 0:
            return float("nan")
        k, b = self.cfg.erm_heads, min(self.cfg.erm_batch_size, n)
        for _ in range(self.cfg.erm_sgd_steps):
            idx = torch.randint(n, (k, b), generator=self.generator)  # (K, B): independent minibatches
            loss = erm_loss(self.params, self.init, self.chosen[idx], self.rejected[idx], self.cfg.erm_lambda, n, self.tokens)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return loss.item() / k

    def state_dict(self) -> dict:
        return {
            "params": {n: t.detach().clone() for n, t in self.params.items()},
            "init": self.init,
            "optimizer": self.optimizer.state_dict(),
            "chosen": self.chosen,
            "rejected": self.rejected,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for n, t in state["params"].items():
                self.params[n].copy_(t)
        self.init = state["init"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.chosen, self.rejected = state["chosen"], state["rejected"]
        self.generator.set_state(state["generator"])
