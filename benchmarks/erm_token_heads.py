"""Does an ERM whose heads score every response token, and sum the scores, keep learning where the
pooled ERM stops? An offline study of the ERM alone (no policy training).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/erm_token_heads.py [--seeds 3] [--cache /tmp/erm-study]

The built-in task's hidden reward is a sum over the summary's words (a salience per post word,
a penalty per word outside the post or repeated). The chosen ERM features (`--erm-layer 0
--erm-logprobs`) pool pi_ref's input embeddings over the response and append the sum, mean and
min of its token log-probs: an MLP on a pooled vector, which stays near 0.78 held-out accuracy
however many labels it gets (`benchmarks/preference_model.py`). Here each head is an MLP g_k on
one token's features, [input embedding; pi_ref's log-prob of the token], and r_k(x, y) =
Σ_t g_k(token t), a form that can express a per-word salience. Both are trained online as the
loop trains the ERM (rounds of 32 labels, 5 Adam steps of Eq. 9 each, every head on its own
minibatch of 64) on the same pairs: two pi_ref samples per training prompt labelled by the
oracle (`erm_features.sample_pairs`), scored on untied pairs of other prompts.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from erm_features import CHECKPOINTS, sample_pairs
from transformers.utils import logging as hf_logging

from sealign.config import ERMConfig
from sealign.erm import anchor_penalty, bradley_terry_nll, ensemble_rewards, init_heads, token_logprob_stats
from sealign.policy import encode_pairs, load_policy, token_logprobs


def left_aligned(x: torch.Tensor, mask: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The masked (response) tokens of `x` (B, T, d), in order, moved to the left and cut or
    zero-padded to `width`, with their mask: (B, width, d), (B, width)."""
    order = torch.argsort((~mask).int(), dim=1, stable=True)[:, :width]  # response positions first
    x = torch.gather(x, 1, order[..., None].expand(-1, -1, x.shape[-1]))
    m = torch.gather(mask, 1, order)
    x = x * m[..., None]
    if pad := width - x.shape[1]:
        x, m = torch.cat([x, x.new_zeros(len(x), pad, x.shape[2])], 1), torch.cat([m, m.new_zeros(len(m), pad)], 1)
    return x, m


@torch.no_grad()
def token_features(lm, tokenizer, prompts: list[str], responses: list[str], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per response token (its <eos> included), pi_ref's input embedding and log-prob side by side,
    (N, width, d + 1), moved to the left, with the mask of real tokens (N, width)."""
    feats, masks = [], []
    for start in range(0, len(prompts), 256):
        batch = encode_pairs(tokenizer, prompts[start : start + 256], responses[start : start + 256])
        res = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        logp = F.pad(token_logprobs(res.logits[:, :-1], batch["input_ids"][:, 1:]), (1, 0))  # (B, T)
        both = torch.cat([res.hidden_states[0].float(), logp[..., None]], -1)  # (B, T, d + 1)
        x, m = left_aligned(both, batch["response_mask"], width)
        feats.append(x)
        masks.append(m)
    return torch.cat(feats), torch.cat(masks)


def pooled(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The chosen ERM features from the same tensors: mean input embedding, then log-prob sum/mean/min."""
    m = mask.float()[..., None]
    mean = (tokens[..., :-1] * m).sum(1) / m.sum(1).clamp(min=1)
    return torch.cat([mean, token_logprob_stats(tokens[..., -1], mask)], -1)


def rewards(params: dict, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """r_k for every head: pooled features x (..., d) → (K, ...); token features (..., T, d) with
    their mask (..., T) → Σ_t g_k(x_t), (K, ...). A leading K of x gives each head its own rows."""
    if mask is None:
        return ensemble_rewards(params, x)
    per_head = x.dim() == 4  # (K, B, T, d)
    flat = x.reshape(x.shape[0], -1, x.shape[-1]) if per_head else x.reshape(-1, x.shape[-1])
    r = ensemble_rewards(params, flat).reshape(-1, *x.shape[int(per_head) : -1])  # (K, B, T)
    return (r * mask).sum(-1)


def run(train: tuple, test: tuple, seed: int, cfg: ERMConfig, round_size: int = 32) -> dict[int, float]:
    """Online ERM training on the first N labels; held-out accuracy of the ensemble mean at each N."""
    (xc, mc), (xr, mr) = train
    g = torch.Generator().manual_seed(seed)
    params = init_heads(cfg.erm_heads, xc.shape[-1], cfg.erm_hidden, g)
    init = {n: t.clone() for n, t in params.items()}
    params = {n: t.requires_grad_(True) for n, t in params.items()}
    opt = torch.optim.Adam(params.values(), lr=cfg.erm_lr)
    pick = lambda t, idx: None if t is None else t[idx].float()  # noqa: E731
    (xa, ma), (xb, mb), a_wins = test
    scores, n = {}, 0
    for checkpoint in CHECKPOINTS:
        while n < checkpoint:
            n = min(n + round_size, checkpoint)
            for _ in range(cfg.erm_sgd_steps):
                idx = torch.randint(n, (cfg.erm_heads, min(cfg.erm_batch_size, n)), generator=g)
                nll = bradley_terry_nll(rewards(params, xc[idx], pick(mc, idx)), rewards(params, xr[idx], pick(mr, idx)))
                loss = (nll + cfg.erm_lambda / n * anchor_penalty(params, init)).sum()  # Eq. 9
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        with torch.no_grad():
            diff = rewards(params, xa, pick(ma, slice(None))) - rewards(params, xb, pick(mb, slice(None)))
        scores[checkpoint] = ((diff.mean(0) > 0) == a_wins).double().mean().item()
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4000, help="training prompts (one labelled pair each)")
    parser.add_argument("--holdout", type=int, default=2000, help="further prompts for held-out pairs")
    parser.add_argument("--seeds", type=int, default=3, help="ERM seeds per configuration")
    parser.add_argument("--cache", default="/tmp/erm-study")
    args = parser.parse_args()
    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()
    t0 = time.time()
    data = sample_pairs(args.prompts + args.holdout, 2, 0, Path(args.cache))
    lm, tokenizer = load_policy(data["reference"])
    width = 14  # the task's 12 new tokens and <eos>, with a spare
    first = token_features(lm, tokenizer, data["prompts"], data["first"], width)
    second = token_features(lm, tokenizer, data["prompts"], data["second"], width)
    n, z = args.prompts, data["first_wins"]
    held = torch.arange(n, len(z))[~data["tie"][n:]]
    print(f"{len(z)} pairs, train {n}, held-out {len(held)} untied; token features {tuple(first[0].shape[1:])} ({time.time() - t0:.0f}s)")

    def side(wins: bool, rows: torch.Tensor, kind: str) -> tuple:
        (xa, ma), (xb, mb) = first, second
        w = z[rows] if wins else ~z[rows]
        x = torch.where(w[:, None, None], xa[rows], xb[rows])
        m = torch.where(w[:, None], ma[rows], mb[rows])
        if kind == "pooled":
            return pooled(x, m), None
        return (x, m) if kind == "tokens" else (x[..., :-1], m)

    def held_out(kind: str) -> tuple:
        a = pooled(*(t[held] for t in first)) if kind == "pooled" else (first[0][held], first[1][held])
        b = pooled(*(t[held] for t in second)) if kind == "pooled" else (second[0][held], second[1][held])
        if kind == "pooled":
            a, b = (a, None), (b, None)
        elif kind == "tokens, embeddings only":
            a, b = (a[0][..., :-1], a[1]), (b[0][..., :-1], b[1])
        return a, b, z[held]

    rows = torch.arange(n)
    print("| ERM | " + " | ".join(f"N={c}" for c in CHECKPOINTS) + " |")
    print("|" + "---|" * (len(CHECKPOINTS) + 1))
    for kind, name in [
        ("pooled", "pooled: mean input embedding + log-prob sum/mean/min (the chosen features)"),
        ("tokens", "per-token heads: input embedding + log-prob, summed"),
        ("tokens, embeddings only", "per-token heads: input embedding only, summed"),
    ]:
        t = time.time()
        train = (side(True, rows, kind), side(False, rows, kind))
        runs = [run(train, held_out(kind), seed, ERMConfig()) for seed in range(args.seeds)]
        cells = []
        for c in CHECKPOINTS:
            v = torch.tensor([r[c] for r in runs])
            cells.append(f"{v.mean():.3f} ± {v.std(unbiased=False) / max(1, len(v) - 1) ** 0.5:.3f}")
        print(f"| {name} | " + " | ".join(cells) + f" |  ({time.time() - t:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
