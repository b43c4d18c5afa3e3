"""How well can the epistemic reward model learn the built-in task's preferences, and from which
features? An offline study of the ERM alone (no policy training).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/erm_features.py [--prompts 4000] [--holdout 2000]
        [--seeds 3] [--cache /tmp/erm-study] [--only NAME ...]

pi_ref (the cached built-in reference, `sealign.sft.ensure_reference`) answers training prompts
with M candidates at the loop's temperature (`sealign.actor.Actor`); the passive rule
(`sealign.explorer.Explorer`) picks a random pair per prompt and the task's oracle labels it
(`sealign.oracles.RewardOracle`). The frozen pi_ref gives every response's hidden states at every
layer, pooled over the response tokens, computed once and cached. Each configuration then trains
the ensemble (`sealign.erm.EpistemicRewardModel`) online as the loop does — rounds of
`--round` new labels, each followed by `erm_sgd_steps` Adam steps of Eq. 9 — and is scored after
N = 250 ... 4000 labels on pairs of *other* prompts whose true rewards differ:

- acc: accuracy of the ensemble-mean reward; head: mean accuracy of a single head (what one
  Thompson sample sees);
- calib: accuracy on the half of the held-out pairs where the heads agree most minus the half
  where they disagree most (> 0: the ensemble's disagreement tracks its errors). Disagreement is
  the variance of the preference probability across heads, what `bai_ts` maximises; the spread
  of the raw logit difference grows with the features' scale and, with the log-prob features,
  is largest on the easiest pairs (calib -0.19 by that measure, +0.13 by this one).

A logistic probe fitted to convergence on the feature differences of all training labels
(`probe`) bounds what a linear reward on those features can reach.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers.utils import logging as hf_logging

from sealign.actor import Actor, sampling_seed
from sealign.config import ERMConfig, OracleConfig, PolicyConfig, SFTConfig, TaskConfig
from sealign.erm import POOLINGS, EpistemicRewardModel, pool, token_logprob_stats
from sealign.explorer import Explorer
from sealign.oracles import RewardOracle
from sealign.policy import encode_pairs, load_policy, token_logprobs
from sealign.records import Duels
from sealign.sft import ensure_reference
from sealign.tasks import make_task

CHECKPOINTS = (250, 500, 1000, 2000, 4000)


# ---- data: pairs from pi_ref, labelled by the oracle ----------------------------------------


def sample_pairs(n_prompts: int, m: int, seed: int, cache: Path) -> dict:
    """One random pair of pi_ref's candidates per training prompt, with the oracle's label."""
    path = cache / f"pairs-{n_prompts}-m{m}-s{seed}.pt"
    if path.exists():
        return torch.load(path)
    task_cfg = TaskConfig()
    task = make_task(task_cfg)
    ref = ensure_reference(task_cfg, PolicyConfig(), SFTConfig(), progress=False)
    model, tokenizer = load_policy(ref.path)
    actor = Actor(model, tokenizer, num_candidates=m, temperature=0.7, max_new_tokens=task.max_new_tokens)
    explorer = Explorer("passive", seed)
    oracle = RewardOracle(task.reward, OracleConfig())
    prompts = [r.prompt for r in task.records("train")[:n_prompts]]
    torch.manual_seed(seed)
    duels = []
    for start in range(0, n_prompts, 256):
        duels.append(explorer.select(actor.propose(prompts[start : start + 256], seed=sampling_seed(seed, start, 0))).duels)
    duels = Duels(
        prompts=[p for d in duels for p in d.prompts],
        first=[y for d in duels for y in d.first],
        second=[y for d in duels for y in d.second],
    )
    first_wins = oracle.label(duels.prompts, duels.first, duels.second).first_wins  # the task oracle answers every pair
    r_first, r_second = oracle.score(duels.prompts, duels.first), oracle.score(duels.prompts, duels.second)
    data = {
        "reference": str(ref.path),
        "prompts": duels.prompts,
        "first": duels.first,
        "second": duels.second,
        "first_wins": first_wins,
        "tie": r_first == r_second,  # includes identical responses (a prompt whose M samples agree)
        "reward_first": r_first,
        "reward_second": r_second,
    }
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return data


@torch.no_grad()
def all_layer_features(lm, tokenizer, prompts: list[str], responses: list[str]) -> dict[str, torch.Tensor]:
    """From the causal LM pi_ref: hidden states of every layer (0 = input embeddings, last = final
    output) pooled over the response every way, `hidden` (N, layers, poolings, d), poolings in the
    order of POOLINGS; the response tokens' log-probs pooled by sum, mean and min, `logp` (N, 3); and
    the input embeddings summed with each token's probability as weight, `pw0` (N, d)."""
    out = {"hidden": [], "logp": [], "pw0": []}
    for start in range(0, len(prompts), 256):
        batch = encode_pairs(tokenizer, prompts[start : start + 256], responses[start : start + 256])
        res = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        mask = batch["response_mask"]
        out["hidden"].append(
            torch.stack([torch.stack([pool(h.float(), mask, p) for p in POOLINGS], 1) for h in res.hidden_states], 1)
        )
        logp = F.pad(token_logprobs(res.logits[:, :-1], batch["input_ids"][:, 1:]), (1, 0))  # (B, T)
        out["logp"].append(token_logprob_stats(logp, mask))
        out["pw0"].append(pool(res.hidden_states[0].float() * logp.exp()[..., None], mask, "sum"))
    return {k: torch.cat(v) for k, v in out.items()}


def features(data: dict, cache: Path, tag: str) -> tuple[dict, dict]:
    path = cache / f"features2-{tag}.pt"
    if path.exists():
        return torch.load(path)
    lm, tokenizer = load_policy(data["reference"])
    f = all_layer_features(lm, tokenizer, data["prompts"], data["first"])
    s = all_layer_features(lm, tokenizer, data["prompts"], data["second"])
    torch.save((f, s), path)
    return f, s


# ---- configurations ------------------------------------------------------------------------


@dataclass
class Spec:
    name: str
    layers: tuple[int, ...] = (-1,)  # indices into the hidden states; -1 = last (the package default)
    pooling: str = "mean"
    norm: str = "none"  # none | std (per dimension, from unlabelled features) | ln (per hidden-state vector)
    extra: tuple[str, ...] = ()  # "pw0": probability-weighted input embeddings; "logp": token log-prob sum/mean/min (raw, last)
    erm: dict = field(default_factory=dict)  # ERMConfig overrides


def select(feats: dict, spec: Spec) -> torch.Tensor:
    """The configured blocks side by side, (N, D), each hidden-state block normalised per spec.norm."""
    blocks = [feats["hidden"][:, layer, POOLINGS.index(spec.pooling)] for layer in spec.layers]
    blocks += [feats["pw0"]] if "pw0" in spec.extra else []
    if spec.norm == "ln":
        blocks = [F.layer_norm(b, b.shape[-1:]) for b in blocks]
    return torch.cat(blocks + ([feats["logp"]] if "logp" in spec.extra else []), -1)


def evaluate(erm: EpistemicRewardModel, a: torch.Tensor, b: torch.Tensor, a_wins: torch.Tensor) -> dict:
    diff = erm.rewards(a) - erm.rewards(b)  # (K, n)
    acc = ((diff.mean(0) > 0) == a_wins).double().mean().item()
    head = ((diff > 0) == a_wins).double().mean().item()
    correct = ((diff.mean(0) > 0) == a_wins).double()
    order = torch.sigmoid(diff).var(0, unbiased=False).argsort()  # as explore.preference_variance
    half = len(order) // 2
    calib = correct[order[:half]].mean().item() - correct[order[half:]].mean().item()
    return {"acc": acc, "head": head, "calib": calib}


def run(spec: Spec, train: tuple, test: tuple, seed: int, round_size: int, tokens: int = 0) -> dict[int, dict]:
    """Online ERM training on the first N labels; held-out scores at each checkpoint. `tokens`:
    per-token features (`sealign.erm.per_token`)."""
    chosen, rejected = train
    erm = EpistemicRewardModel(chosen.shape[1], replace(ERMConfig(), **spec.erm), seed, tokens)
    scores = {}
    start = 0
    for checkpoint in CHECKPOINTS:
        while start < checkpoint:  # rounds never straddle a checkpoint
            stop = min(start + round_size, checkpoint)
            erm.add(chosen[start:stop], rejected[start:stop])
            erm.train_round()
            start = stop
        scores[checkpoint] = evaluate(erm, *test)
    return scores


def probe(train: tuple, test: tuple, steps: int = 300) -> float:
    """A logistic regression on feature differences, fitted to convergence (L-BFGS, light L2)."""
    chosen, rejected = train
    x = chosen - rejected
    w = torch.zeros(x.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -F.logsigmoid(x @ w).mean() + 1e-4 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    a, b, a_wins = test
    return (((a - b) @ w.detach() > 0) == a_wins).double().mean().item()


SPECS = [
    Spec("default: last, mean"),
    Spec("last, sum", pooling="sum"),
    Spec("last, last-token", pooling="last"),
    Spec("emb (layer 0), mean", layers=(0,)),
    Spec("emb (layer 0), sum", layers=(0,), pooling="sum"),
    Spec("layer 1, sum", layers=(1,), pooling="sum"),
    Spec("layer 2, sum", layers=(2,), pooling="sum"),
    Spec("emb, sum, std", layers=(0,), pooling="sum", norm="std"),
    Spec("last, sum, std", pooling="sum", norm="std"),
    Spec("last, mean, std", norm="std"),
    Spec("emb+last, sum, std", layers=(0, -1), pooling="sum", norm="std"),
    Spec("all layers, sum, std", layers=(0, 1, 2, 3, 4), pooling="sum", norm="std"),
    Spec("all layers, mean, std", layers=(0, 1, 2, 3, 4), norm="std"),
    Spec("emb, sum, ln", layers=(0,), pooling="sum", norm="ln"),
    Spec("emb, mean, ln", layers=(0,), norm="ln"),
    Spec("last, sum, ln", pooling="sum", norm="ln"),
    Spec("emb+last, sum, ln", layers=(0, -1), pooling="sum", norm="ln"),
    Spec("all layers, sum, ln", layers=(0, 1, 2, 3, 4), pooling="sum", norm="ln"),
    Spec("p-weighted emb, ln", layers=(), norm="ln", extra=("pw0",)),
    # with the token log-prob statistics (--erm-logprobs)
    Spec("logp only", layers=(), extra=("logp",)),
    Spec("last, mean + logp", extra=("logp",)),
    Spec("emb, mean + logp", layers=(0,), extra=("logp",)),
    Spec("emb+last, mean + logp", layers=(0, -1), extra=("logp",)),
    Spec("emb, sum, ln + logp", layers=(0,), pooling="sum", norm="ln", extra=("logp",)),
    Spec("p-weighted emb, ln + logp", layers=(), norm="ln", extra=("pw0", "logp")),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4000, help="training prompts (one labelled pair each)")
    parser.add_argument("--holdout", type=int, default=2000, help="further prompts for held-out pairs")
    parser.add_argument("--candidates", type=int, default=4, help="M: pi_ref samples per prompt")
    parser.add_argument("--round", type=int, default=32, help="new labels per ERM training round")
    parser.add_argument("--seeds", type=int, default=3, help="ERM seeds per configuration")
    parser.add_argument("--cache", default="/tmp/erm-study")
    parser.add_argument("--only", nargs="*", help="run only the configurations whose names contain one of these")
    parser.add_argument("--extra", action="store_true", help="also sweep the heads' hyper-parameters")
    args = parser.parse_args()
    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()
    cache = Path(args.cache)
    t0 = time.time()
    data = sample_pairs(args.prompts + args.holdout, args.candidates, 0, cache)
    f_first, f_second = features(data, cache, f"{args.prompts + args.holdout}-m{args.candidates}-s0")
    n = args.prompts
    z = data["first_wins"]
    held = torch.arange(n, len(z))[~data["tie"][n:]]
    print(
        f"{len(z)} pairs from pi_ref ({time.time() - t0:.0f}s); train {n} (ties {data['tie'][:n].double().mean():.1%}), "
        f"held-out {len(held)} untied; hidden features {tuple(f_first['hidden'].shape[1:])}"
    )

    specs = list(SPECS)
    if args.extra:
        best = Spec("emb, mean + logp", layers=(0,), extra=("logp",))
        for name, erm in [
            ("lr 3e-3", {"erm_lr": 3e-3}),
            ("steps 20", {"erm_sgd_steps": 20}),
            ("lambda 0.05", {"erm_lambda": 0.05}),
            ("lambda 5", {"erm_lambda": 5.0}),
            ("hidden 256", {"erm_hidden": 256}),
            ("heads 10", {"erm_heads": 10}),
        ]:
            specs.append(replace(best, name=f"{best.name}; {name}", erm=erm))
            specs.append(replace(Spec("default: last, mean"), name=f"default; {name}", erm=erm))
    if args.only:
        specs = [s for s in specs if any(o in s.name for o in args.only)]

    header = "| config | " + " | ".join(f"N={c}" for c in CHECKPOINTS) + " | head@4000 | calib@4000 | probe |"
    print(header)
    print("|" + "---|" * (len(CHECKPOINTS) + 4))
    for spec in specs:
        t = time.time()
        fa, fb = select(f_first, spec), select(f_second, spec)
        if spec.norm == "std":  # statistics of the training responses, labels unused
            stats_from = torch.cat([fa[:n], fb[:n]])
            mean, std = stats_from.mean(0), stats_from.std(0).clamp(min=1e-6)
            fa, fb = (fa - mean) / std, (fb - mean) / std
        zt = z[:n, None]
        train = (torch.where(zt, fa[:n], fb[:n]), torch.where(zt, fb[:n], fa[:n]))
        test = (fa[held], fb[held], z[held])
        runs = [run(spec, train, test, seed, args.round) for seed in range(args.seeds)]

        def stat(c, key):
            v = torch.tensor([r[c][key] for r in runs])
            return f"{v.mean():.3f}±{v.std(unbiased=False) / max(1, len(v) - 1) ** 0.5:.3f}" if len(v) > 1 else f"{v.mean():.3f}"

        cells = [stat(c, "acc") for c in CHECKPOINTS]
        last = max(CHECKPOINTS)
        print(
            f"| {spec.name} | " + " | ".join(cells) + f" | {stat(last, 'head')} | {stat(last, 'calib')} | "
            f"{probe(train, test):.3f} |  ({time.time() - t:.0f}s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
