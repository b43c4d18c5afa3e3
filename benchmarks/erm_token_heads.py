"""Does an ERM whose heads score every response token, and sum the scores (`--erm-pooling
tokens`), keep learning where the pooled ERM stops? An offline study of the ERM alone (no policy
training).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/erm_token_heads.py [--seeds 3] [--cache /tmp/erm-study] [--knobs]

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

CONFIGS = {  # name: Backbone settings on pi_ref's input embeddings (layer 0)
    "pooled: mean input embedding + log-prob sum/mean/min (the chosen features)": {"pooling": "mean", "logprobs": True},
    "per-token heads: input embedding + log-prob, summed": {"pooling": "tokens", "logprobs": True},
    "per-token heads: input embedding only, summed": {"pooling": "tokens", "logprobs": False},
}
KNOBS = {  # name: ERMConfig overrides of the per-token heads' training (--knobs)
    "5 Adam steps per round, lr 1e-3, λ 0.5 (the defaults)": {},
    "lr 3e-3": {"erm_lr": 3e-3},
    "lr 1e-2": {"erm_lr": 1e-2},
    "10 Adam steps per round": {"erm_sgd_steps": 10},
    "1 Adam step per round": {"erm_sgd_steps": 1},
    "λ 0.05": {"erm_lambda": 0.05},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4000, help="training prompts (one labelled pair each)")
    parser.add_argument("--holdout", type=int, default=2000, help="further prompts for held-out pairs")
    parser.add_argument("--seeds", type=int, default=3, help="ERM seeds per configuration")
    parser.add_argument("--cache", default="/tmp/erm-study")
    parser.add_argument("--knobs", action="store_true", help="per-token heads under other training settings (rounds of 16)")
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
    features = {}  # Backbone settings -> (train pairs, held-out pairs, tokens): --knobs reuses one
    zt, round_size = z[:n, None], 16 if args.knobs else 32
    for name, (settings, erm) in grid.items():
        t = time.time()
        key = tuple(settings.items())
        if key not in features:
            backbone = Backbone(data["reference"], layer=0, tokens=tokens if settings["pooling"] == "tokens" else 0, **settings)
            fa, fb = backbone.features(data["prompts"], data["first"]), backbone.features(data["prompts"], data["second"])
            train = (torch.where(zt, fa[:n], fb[:n]), torch.where(zt, fb[:n], fa[:n]))
            features[key] = train, (fa[held], fb[held], z[held]), backbone.tokens
        train, test, n_tokens = features[key]
        runs = [run(Spec(name, erm=erm), train, test, seed, round_size, n_tokens) for seed in range(args.seeds)]
        cells = []
        for c in CHECKPOINTS:
            v = torch.tensor([r[c]["acc"] for r in runs])
            cells.append(f"{v.mean():.3f} ± {v.std(unbiased=False) / max(1, len(v) - 1) ** 0.5:.3f}")
        print(f"| {name} | " + " | ".join(cells) + f" |  ({time.time() - t:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
