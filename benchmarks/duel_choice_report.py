"""Report of the duel-choice analysis (docs/results.md, "The bound on any choice of duels"): the
runs of `benchmarks/sea_oracle_erm.py --noise 0` under studies/oracle-select/ARM-sS set beside
online DPO's runs of the screens, as a study's table and a plot (docs/duel-choice.png).

    .venv/bin/python benchmarks/duel_choice_report.py [--seeds 100 101] [--png docs/duel-choice.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sealign.study import _panel_report, curve_of, plot

ONLINE = "studies/screen-cost/runs/agent-online-loss-dpo-budget-5000-eval-every-250-beta-0.05-lr-schedule-constant-with-warmup-s{}"
ARMS = {  # folder name under studies/oracle-select -> label
    "passive20": "two of 20 at random",
    "top2": "r*'s best two (E&E/BAI, perfect ERM)",
    "bestrandom": "r*'s best vs a random other",
    "bestworst": "r*'s best vs its worst",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[100, 101])
    parser.add_argument("--png", default="docs/duel-choice.png")
    args = parser.parse_args()
    curves = [curve_of("online dpo (two samples)", [Path(ONLINE.format(s)) for s in args.seeds])]
    curves[0].agent = "online"  # the baseline of the level table
    curves += [curve_of(label, [Path(f"studies/oracle-select/{arm}-s{s}") for s in args.seeds]) for arm, label in ARMS.items()]
    print("\n".join(_panel_report(curves)))
    plot(curves, Path(args.png), f"Which duel the oracle is asked about (every ERM head is r*; seeds {args.seeds[0]}-{args.seeds[-1]})")


if __name__ == "__main__":
    main()
