"""The built-in task's pretrained preference model (the paper's PairRM analogue): what it costs
to build, how far it agrees with the oracle zero-shot, and how well the ERM learns the oracle
on its frozen features against pi_ref's.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/preference_model.py [--prompts 4000] [--holdout 2000]

Pairs are two pi_ref samples per training prompt (`erm_features.sample_pairs`), labelled by the
oracle; agreement is measured on held-out pairs whose true rewards differ. Rows:

- the public judge itself (the model's teacher): the ceiling of zero-shot agreement;
- the preference model's own score (zero-shot: it never saw an oracle label);
- the ERM (ensemble mean, `erm_features.run`) after N oracle labels, on each backbone's features.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as hf_logging

from erm_features import CHECKPOINTS, Spec, run, sample_pairs
from sealign.config import PreferenceModelConfig, TaskConfig
from sealign.erm import Backbone
from sealign.preference_model import ensure_preference_model, pairwise_agreement
from sealign.tasks import make_task


def agreement(better: torch.Tensor, z: torch.Tensor) -> float:
    return (better == z).double().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4000, help="training prompts (one labelled pair each)")
    parser.add_argument("--holdout", type=int, default=2000, help="further prompts for held-out pairs")
    parser.add_argument("--seeds", type=int, default=3, help="ERM seeds per configuration")
    parser.add_argument("--cache", default="/tmp/erm-study")
    parser.add_argument("--pm", help="a saved preference model to measure instead of the default (e.g. one that "
                        "benchmarks/preference_model_variants.py --save wrote)")
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    task_cfg, pm_cfg = TaskConfig(), PreferenceModelConfig()
    t0 = time.time()
    if args.pm:
        pm_path = args.pm
        print(f"preference model {pm_path}")
    else:
        pm = ensure_preference_model(task_cfg, pm_cfg, progress=False)
        pm_path = pm.path
        size = sum(f.stat().st_size for f in Path(pm.path).glob("*.safetensors")) / 2**20
        print(
            f"preference model {pm.path}: {pm.meta['parameters']:,} parameters, {size:.2f} MiB, built in {pm.meta['seconds']} s "
            f"({'cached' if pm.reused else f'{time.time() - t0:.0f} s now'}); held-out agreement with the public judge "
            f"{pm.meta['public_judge_agreement']:.3f}"
        )
    data = sample_pairs(args.prompts + args.holdout, 2, 0, Path(args.cache))
    n, z = args.prompts, data["first_wins"]
    held = torch.arange(n, len(z))[~data["tie"][n:]]
    prompts, first, second = ([data[k][i] for i in held.tolist()] for k in ("prompts", "first", "second"))
    task = make_task(task_cfg)
    public = torch.tensor(task.public_reward(prompts, first)) > torch.tensor(task.public_reward(prompts, second))
    model, tokenizer = AutoModelForSequenceClassification.from_pretrained(pm_path), AutoTokenizer.from_pretrained(pm_path)
    print(f"{len(held)} held-out pi_ref pairs with distinct true rewards")
    print(f"| judge | agreement with the oracle |\n|---|---|\n| public judge | {agreement(public, z[held]):.3f} |")
    chosen = [a if zi else b for a, b, zi in zip(first, second, z[held].tolist())]
    rejected = [b if zi else a for a, b, zi in zip(first, second, z[held].tolist())]
    print(f"| preference model, zero-shot | {pairwise_agreement(model, tokenizer, prompts, chosen, rejected):.3f} |")

    print("\n| ERM features | " + " | ".join(f"N={c}" for c in CHECKPOINTS) + " |\n|" + "---|" * (len(CHECKPOINTS) + 1))
    ref = data["reference"]
    backbones = {
        "pi_ref, last layer, mean": [Backbone(ref, "mean")],
        "pi_ref, embeddings + log-probs (SEA's screened features)": [Backbone(ref, "mean", layer=0, logprobs=True)],
        "preference model, mean": [Backbone(pm_path, "mean")],
        "preference model, last token": [Backbone(pm_path, "last")],
    }
    backbones["pi_ref embeddings + log-probs, and the preference model's last token"] = [
        *backbones["pi_ref, embeddings + log-probs (SEA's screened features)"], *backbones["preference model, last token"]
    ]
    for name, parts in backbones.items():
        fa = torch.cat([b.features(data["prompts"], data["first"]) for b in parts], -1)  # (N, d)
        fb = torch.cat([b.features(data["prompts"], data["second"]) for b in parts], -1)
        zt = z[:n, None]
        train = (torch.where(zt, fa[:n], fb[:n]), torch.where(zt, fb[:n], fa[:n]))
        test = (fa[held], fb[held], z[held])
        runs = [run(Spec(name), train, test, seed, 32) for seed in range(args.seeds)]
        cells = [f"{torch.tensor([r[c]['acc'] for r in runs]).mean():.3f}" for c in CHECKPOINTS]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
