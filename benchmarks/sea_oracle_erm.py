"""Where SEA's gain is lost: SEA with its epistemic reward model replaced by the task's hidden
reward plus independent Gaussian noise per head (an ERM as good as we choose), run with any
`sealign train` flags, so that it can be set beside real SEA and online DPO runs of a study.

    .venv/bin/python benchmarks/sea_oracle_erm.py [--noise 0.5] [--out runs/sea-oracle-erm] [TRAIN FLAGS ...]

TRAIN FLAGS follow `--agent sea --loss dpo --budget 5000 --eval-every 250 --seed 0`, and a flag
given again wins (e.g. `--seed 1`, the chosen setting with `--explore ee_ts --burn-in 100
--num-candidates 10`, or the confidence gate with `--erm-gate 1.0 --gamma 0.3`).

This is an analysis, not an agent: it lets the *agent* see the oracle's reward, which no real
run may do. If SEA with a good ERM beats online DPO clearly while the real SEA does not, the
selection and mixing machinery works and the loss lies in the ERM's accuracy; if even this
ERM falls short of a target, better features cannot reach it.

With `--noise 0` every head is r*, which bounds what a choice of the oracle's duels can give:
`--explore ee_ts` (or `bai_ts`) then asks about r*'s best two candidates (the clash rule), the
limit of E&E and BAI with a perfect ERM; `--explore ee_ts --clash random` about r*'s best against
a uniformly drawn other candidate; `--explore best_worst_ts` about its best against its worst.
Run with `--agent sea-noalign` to see the choice of duels alone, without self-labelled pairs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from sealign import explorer as explorer_mod
from sealign.cli import run_config
from sealign.loop import train
from sealign.records import Duels
from sealign.tasks import make_task

DEFAULT_FLAGS = ["--agent", "sea", "--loss", "dpo", "--budget", "5000", "--eval-every", "250", "--seed", "0"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise", type=float, default=0.5, help="std of each head's error around r*")
    parser.add_argument("--out", default="runs/sea-oracle-erm")
    args, flags = parser.parse_known_args()
    hf_logging.disable_progress_bar()
    flags = [*DEFAULT_FLAGS, *flags]  # argparse keeps a flag's last value
    cfg = run_config([*flags, "--out", args.out])
    task = make_task(cfg.task)
    heads = cfg.erm.erm_heads

    def select(self, candidates):
        p, m = len(candidates.prompts), candidates.num_candidates
        flat_prompts, flat = candidates.flat()
        true = torch.tensor(task.reward(flat_prompts, flat), dtype=torch.float32).reshape(p, m)
        rewards = true + args.noise * torch.randn(heads, p, m, generator=self.generator)  # (K, P, M)
        features = self.features(flat_prompts, flat).reshape(p, m, -1)
        mask = candidates.first_occurrences()
        choice = self.rule(rewards, self.generator, mask)
        duels = Duels.pick(candidates, choice.first, choice.second)
        return explorer_mod.Selection(candidates, choice, duels, mask, rewards, features, list(range(p)))

    explorer_mod.Explorer.select = select
    train_and_report(cfg, f"SEA with an r* + N(0, {args.noise}^2) ERM ({' '.join(flags)})")


def train_and_report(cfg, title: str) -> None:
    """Run the (patched) loop and print its final win rate and every fourth evaluation."""
    summary = train(cfg)
    rows = [json.loads(line) for line in (Path(cfg.folder) / "metrics.jsonl").read_text().splitlines()]
    print(f"{title}: final win rate {summary['final_win_rate']:.3f}")
    print("| queries | " + " | ".join(str(r["queries"]) for r in rows[::4]) + " |")
    print("| win rate | " + " | ".join(f"{r['win_rate']:.3f}" for r in rows[::4]) + " |")


if __name__ == "__main__":
    main()
