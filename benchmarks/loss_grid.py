"""Online vs offline DAP on the built-in task: every loss, several seeds, one table.

    .venv/bin/python benchmarks/loss_grid.py [--budget 5000] [--seeds 0 1 2] [--out runs/loss-grid]

Runs are resumable: a run whose summary.json exists is skipped, an interrupted one resumed.
Prints a markdown table of greedy win rate vs references (mean ± standard error over seeds).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from transformers.utils import logging as hf_logging

from sealign.config import OracleConfig, PolicyConfig, SFTConfig, TaskConfig, TrainConfig
from sealign.loop import train

GRID = [  # (agent, loss, beta): beta None = the loss's default; IPO's is not tuned here
    ("online", "dpo", None),
    ("offline", "dpo", None),
    ("online", "ipo", 0.5),
    ("online", "slic", None),
    ("online", "simpo", None),
]


def mean_se(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, float("nan")
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1)
    return m, math.sqrt(var / len(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=5000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/loss-grid")
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    rows = []
    for agent, loss, beta in GRID:
        summaries = []
        for seed in args.seeds:
            run = Path(args.out) / f"{agent}-{loss}-s{seed}"
            if (run / "summary.json").is_file():
                summaries.append(json.loads((run / "summary.json").read_text()))
                continue
            resume = (run / "config.json").is_file()
            cfg = TrainConfig(
                agent=agent, loss=loss, beta=beta, budget=args.budget, seed=seed,
                out=None if resume else str(run), resume=str(run) if resume else None,
            )
            summaries.append(train(cfg, TaskConfig(), PolicyConfig(), SFTConfig(), OracleConfig(), progress=False))
        final = mean_se([s["final_win_rate"] for s in summaries])
        gain = mean_se([s["final_win_rate"] - s["initial_win_rate"] for s in summaries])
        secs = {k: sum(s["seconds"][k] for s in summaries) / len(summaries) for k in ("generate", "oracle", "learn", "eval")}
        wall = sum(s["wall_seconds"] for s in summaries) / len(summaries)
        rows.append((agent, loss, summaries[0]["initial_win_rate"], final, gain, wall, secs))
    print(f"| agent | loss | pi_ref | final win rate ({len(args.seeds)} seeds) | gain | wall s | generate / oracle / learn / eval s |")
    print("|---|---|---|---|---|---|---|")
    for agent, loss, init, (m, se), (g, gse), wall, s in rows:
        print(
            f"| {agent} | {loss} | {init:.3f} | {m:.3f} ± {se:.3f} | {g:+.3f} ± {gse:.3f} | {wall:.0f} | "
            f"{s['generate']:.1f} / {s['oracle']:.1f} / {s['learn']:.1f} / {s['eval']:.1f} |"
        )


if __name__ == "__main__":
    main()
