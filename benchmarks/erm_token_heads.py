"""Does an ERM whose heads score every response token, and sum the scores (`--erm-pooling
tokens`), keep learning where the pooled ERM stops? An offline study of the ERM alone (no policy
training).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/erm_token_heads.py [--seeds 3] [--cache /tmp/erm-study] [--knobs] [--only TEXT]

The built-in task's hidden reward is a sum over the summary's words (a salience per post word,
a penalty per word outside the post or repeated). The chosen ERM features (`--erm-layer 0
--erm-logprobs`) pool pi_ref's input embeddings over the response and append the sum, mean and
min of its token log-probs: an MLP on a pooled vector, which stays near 0.78 held-out accuracy
however many labels it gets (`benchmarks/preference_model.py`). Per token, each head is an MLP
g_k on one token's features, [input embedding; pi_ref's log-prob of the token], and r_k(x, y) =
Σ_t g_k(token t), a form that can express a per-word salience. Each is computed by the package's
`Backbone` and trained online as the loop trains the ERM (`erm_features.run`: rounds of 32
labels, 5 Adam steps of Eq. 9 each) on the same pairs: two pi_ref samples per training prompt
labelled by the oracle (`erm_features.sample_pairs`), scored on untied pairs of other prompts.

Two more rows ask what holds the per-token ERM back. `--erm-grounding` adds each token's largest
input-embedding cosine to the post's tokens and to the earlier response tokens. The last row, a
diagnostic and not an ERM option, gives the heads the task's own answer instead: +1 for a word of
the post said first, -1 for a foreign word, 0 for a repeat.

`--knobs` trains the per-token heads (input embedding + log-prob) under other ERM training
settings instead, in rounds of 16 labels as the loop's per-token setting (γ 0.5) trains them:
does the ERM's accuracy depend on how it is trained, or on its features?
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from erm_features import CHECKPOINTS, Spec, run, sample_pairs
from transformers.utils import logging as hf_logging

from sealign.config import TaskConfig
from sealign.erm import Backbone
from sealign.tasks import make_task
from sealign.tasks.keywords import post_words

CONFIGS = {  # name: Backbone settings on pi_ref's input embeddings (layer 0)
    "pooled: mean input embedding + log-prob sum/mean/min (the chosen features)": {"pooling": "mean", "logprobs": True},
    "per-token heads: input embedding + log-prob, summed": {"pooling": "tokens", "logprobs": True},
    "per-token heads: input embedding only, summed": {"pooling": "tokens", "logprobs": False},
    "per-token heads: input embedding + log-prob + grounding (--erm-grounding), summed": {
        "pooling": "tokens", "logprobs": True, "grounding": True
    },
    "diagnostic: per-token heads: input embedding + log-prob + the task's copied/foreign/repeat answer": {
        "pooling": "tokens", "logprobs": True, "told": True
    },
}
KNOBS = {  # name: ERMConfig overrides of the per-token heads' training (--knobs)
    "5 Adam steps per round, lr 1e-3, λ 0.5 (the defaults)": {},
    "lr 3e-3": {"erm_lr": 3e-3},
    "lr 1e-2": {"erm_lr": 1e-2},
    "10 Adam steps per round": {"erm_sgd_steps": 10},
    "1 Adam step per round": {"erm_sgd_steps": 1},
    "λ 0.05": {"erm_lambda": 0.05},
}


def told(prompts: list[str], responses: list[str], tokens: int) -> torch.Tensor:
    """The task's own answer per response word (+1 a post word said first, -1 a foreign word, 0 a
    repeat), (B, tokens, 1); the <eos> and padding get 0."""
    out = torch.zeros(len(responses), tokens, 1)
    for i, (x, y) in enumerate(zip(prompts, responses)):
        post, seen = set(post_words(x)), set()
        for t, word in enumerate(y.split()[: tokens - 1]):
            out[i, t, 0] = 0.0 if word in seen else 1.0 if word in post else -1.0
            seen.add(word)
    return out


def backbone_features(data: dict, settings: dict, tokens: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Features of both responses of every pair under Backbone `settings` (plus `told`)."""
    settings = dict(settings)
    add_told = settings.pop("told", False)
    backbone = Backbone(data["reference"], layer=0, tokens=tokens if settings["pooling"] == "tokens" else 0, **settings)
    pair = []
    for side in ("first", "second"):
        f = backbone.features(data["prompts"], data[side])
        if add_told:  # before each token's mask column
            f = f.unflatten(-1, (tokens, -1))
            f = torch.cat([f[..., :-1], told(data["prompts"], data[side], tokens), f[..., -1:]], -1).flatten(1)
        pair.append(f)
    return pair[0], pair[1], backbone.tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4000, help="training prompts (one labelled pair each)")
    parser.add_argument("--holdout", type=int, default=2000, help="further prompts for held-out pairs")
    parser.add_argument("--seeds", type=int, default=3, help="ERM seeds per configuration")
    parser.add_argument("--cache", default="/tmp/erm-study")
    parser.add_argument("--knobs", action="store_true", help="per-token heads under other training settings (rounds of 16)")
    parser.add_argument("--only", default="", help="only the rows whose name contains this text")
    args = parser.parse_args()
    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()
    data = sample_pairs(args.prompts + args.holdout, 2, 0, Path(args.cache))
    tokens = make_task(TaskConfig()).max_new_tokens + 1  # the response limit and its <eos>, as the loop sets it
    n, z = args.prompts, data["first_wins"]
    held = torch.arange(n, len(z))[~data["tie"][n:]]
    print(f"{len(z)} pairs, train {n}, held-out {len(held)} untied")
    print("| ERM | " + " | ".join(f"N={c}" for c in CHECKPOINTS) + " |")
    print("|" + "---|" * (len(CHECKPOINTS) + 1))
    per_token = CONFIGS["per-token heads: input embedding + log-prob, summed"]
    grid = {name: (per_token, erm) for name, erm in KNOBS.items()} if args.knobs else {name: (c, {}) for name, c in CONFIGS.items()}
    grid = {name: row for name, row in grid.items() if args.only in name}
    features = {}  # Backbone settings -> (train pairs, held-out pairs, tokens): --knobs reuses one
    zt, round_size = z[:n, None], 16 if args.knobs else 32
    for name, (settings, erm) in grid.items():
        t = time.time()
        key = tuple(settings.items())
        if key not in features:
            fa, fb, n_tokens = backbone_features(data, settings, tokens)
            train = (torch.where(zt, fa[:n], fb[:n]), torch.where(zt, fb[:n], fa[:n]))
            features[key] = train, (fa[held], fb[held], z[held]), n_tokens
        train, test, n_tokens = features[key]
        runs = [run(Spec(name, erm=erm), train, test, seed, round_size, n_tokens) for seed in range(args.seeds)]
        cells = []
        for c in CHECKPOINTS:
            v = torch.tensor([r[c]["acc"] for r in runs])
            cells.append(f"{v.mean():.3f} ± {v.std(unbiased=False) / max(1, len(v) - 1) ** 0.5:.3f}")
        print(f"| {name} | " + " | ".join(cells) + f" |  ({time.time() - t:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
