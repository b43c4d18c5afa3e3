"""Queries per second of online DPO on the local backend and on Ray with 1 and 2 actors.

    .venv/bin/python benchmarks/ray_scaling.py [--budget 960] [--reps 2] [--out runs/ray-scaling]

Each setting is one `sealign train` process on the built-in task (pi_ref from the cache,
built first if missing), the settings alternating within each repetition so that a noisy
machine hurts them alike. Every process runs torch on one thread (OMP_NUM_THREADS=1), as
does every Ray actor (`--actor-cpus 1`): the local backend then uses one core, and each
actor adds one, which is the question asked; several threads per process on two shared
cores made the rates swing tenfold between repetitions. The rate is measured from the first evaluation after the start
to the end, evaluation time subtracted, so it leaves out Ray's start-up and the actors'
first import of torch. Prints a table (median over repetitions, and the ratio to the local
backend) and writes it to OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = {
    "local": [],
    "ray, 1 actor": ["--backend", "ray", "--actors", "1"],
    "ray, 2 actors": ["--backend", "ray", "--actors", "2"],
    "ray, 2 actors, async": ["--backend", "ray", "--actors", "2", "--async"],
}


def steady_rate(run: Path) -> dict:
    """Queries/s between the second evaluation row and the last, evaluation time left out."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[1], rows[-1]
    seconds = (last["wall"] - first["wall"]) - (last["time_eval"] - first["time_eval"])
    summary = json.loads((run / "summary.json").read_text())
    return {
        "queries_per_s": (last["queries"] - first["queries"]) / seconds,
        "final_win_rate": summary["final_win_rate"],
        "generate_s": last["time_generate"] - first["time_generate"],
        "learn_s": last["time_learn"] - first["time_learn"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=960, help="queries per run")
    parser.add_argument("--reps", type=int, default=2, help="repetitions of every setting")
    parser.add_argument("--out", type=Path, default=Path("runs/ray-scaling"), help="fresh folder for the runs")
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"{args.out} exists; give a fresh --out")
    args.out.mkdir(parents=True)
    sealign = [sys.executable, "-m", "sealign"]
    subprocess.run([*sealign, "sft", "--quiet"], check=True)
    eval_every = args.budget // 6
    results: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    for rep in range(args.reps):
        for i, (name, flags) in enumerate(SETTINGS.items()):
            run = args.out / f"r{rep}-{i}"
            start = time.perf_counter()
            subprocess.run(
                [*sealign, "train", "--budget", str(args.budget), "--eval-every", str(eval_every), *flags, "--out", str(run), "--quiet"],
                check=True,
                stdout=subprocess.DEVNULL,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
            results[name].append({**steady_rate(run), "process_s": time.perf_counter() - start})
            print(f"rep {rep} {name}: {results[name][-1]['queries_per_s']:.1f} queries/s", flush=True)
    base = statistics.median(r["queries_per_s"] for r in results["local"])
    table = []
    for name, runs in results.items():
        rate = statistics.median(r["queries_per_s"] for r in runs)
        table.append(
            {
                "setting": name,
                "queries_per_s": round(rate, 1),
                "vs_local": round(rate / base, 2),
                "range": [round(min(r["queries_per_s"] for r in runs), 1), round(max(r["queries_per_s"] for r in runs), 1)],
                "process_s": round(statistics.median(r["process_s"] for r in runs), 1),
                "final_win_rate": [r["final_win_rate"] for r in runs],
            }
        )
    print("\n| setting | queries/s (median) | range | vs local | whole process, s |")
    print("|---|---|---|---|---|")
    for row in table:
        print(f"| {row['setting']} | {row['queries_per_s']} | {row['range'][0]}–{row['range'][1]} | {row['vs_local']}× | {row['process_s']} |")
    (args.out / "results.json").write_text(json.dumps({"budget": args.budget, "reps": args.reps, "table": table}, indent=1))


if __name__ == "__main__":
    main()
