"""Studies: a grid of arms (agent × loss × rule ...) run for several seeds in parallel processes,
resumable, and aggregated into mean ± standard error curves of win rate against queries.

An arm is a label and the `sealign train` flags that define it. Its runs live in
`OUT/runs/<slug of the flags>-s<seed>`, so two presets that share an arm share its runs.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from sealign.errors import SealignError


@dataclass(frozen=True)
class Arm:
    label: str
    flags: tuple[str, ...]

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9.]+", "-", " ".join(self.flags).replace("--", "")).strip("-")


def _arms(*rows: tuple[str, str]) -> list[Arm]:
    return [Arm(label, tuple(flags.split())) for label, flags in rows]


ONLINE = {"dpo": "--agent online --loss dpo", "ipo": "--agent online --loss ipo --beta 0.5", "slic": "--agent online --loss slic"}
SEA = {loss: flags.replace("online", "sea") for loss, flags in ONLINE.items()}

PRESETS: dict[str, tuple[str, list[Arm]]] = {
    "losses": (
        "online vs offline DAP with every loss",
        _arms(
            ("online dpo", ONLINE["dpo"]),
            ("offline dpo", "--agent offline --loss dpo"),
            ("online ipo", ONLINE["ipo"]),
            ("online slic", ONLINE["slic"]),
            ("online simpo", "--agent online --loss simpo"),
        ),
    ),
    "sea": (
        "SEA vs online DAP with DPO, IPO and SLiC (paper Fig. 5)",
        _arms(*[(f"{agent} {loss}", arms[loss]) for loss in ONLINE for agent, arms in (("online", ONLINE), ("sea", SEA))]),
    ),
    "rules": (
        "exploration rules inside SEA-DPO (paper Fig. 7)",
        _arms(
            ("sea ee_ts", SEA["dpo"] + " --explore ee_ts"),
            ("sea bai_ts", SEA["dpo"]),
            ("sea uncertainty", SEA["dpo"] + " --explore uncertainty"),
        ),
    ),
    "baselines": (
        "prior active-exploration baselines APL and XPO beside online DPO and SEA-DPO (paper Fig. 1, 5)",
        _arms(("online dpo", ONLINE["dpo"]), ("sea dpo", SEA["dpo"]), ("apl", "--agent apl --loss dpo"), ("xpo", "--agent xpo --loss dpo")),
    ),
    "variants": (
        "Table 1 variants 1-7 with DPO (paper Fig. 6)",
        _arms(
            ("1 online", ONLINE["dpo"]),
            ("2 sea-noalign", "--agent sea-noalign --loss dpo"),
            ("3 sea", SEA["dpo"]),
            ("4 bon-passive", "--agent bon-passive --loss dpo"),
            ("5 bon-active", "--agent bon-active --loss dpo"),
            ("6 sea-bon", "--agent sea-bon --loss dpo"),
            ("7 erm-bon", "--agent erm-bon --loss dpo"),
        ),
    ),
}


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (nan for a single value)."""
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, float("nan")
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1) / len(values))


def queries_to_reach(queries: Sequence[float], values: Sequence[float], level: float) -> Optional[float]:
    """First query count at which a curve reaches `level`, linearly interpolated between
    evaluations; None if it never does."""
    for i, (q, v) in enumerate(zip(queries, values)):
        if v >= level:
            if i == 0:
                return float(q)
            q0, v0 = queries[i - 1], values[i - 1]
            return q0 + (q - q0) * (level - v0) / (v - v0)
    return None


# ---- running ------------------------------------------------------------------------------


def run_one(folder: Path, flags: Sequence[str], seed: int, threads: int) -> str:
    """Run (or resume, or skip) one seed of one arm in its own process; returns its status."""
    if (folder / "summary.json").is_file():
        return "done before"
    where = ["--resume", str(folder)] if (folder / "config.json").is_file() else [*flags, "--seed", str(seed), "--out", str(folder)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, "-m", "sealign", "train", *where, "--quiet"], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise SealignError(f"run {folder} failed: {last}")
    return "ran"


def run_study(arms: list[Arm], out: Path, seeds: Sequence[int], jobs: int, extra: Sequence[str] = (), echo=print) -> None:
    """Every (arm, seed) not finished yet, `jobs` at a time, each with cores // jobs threads."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    tasks = [(out / "runs" / f"{arm.slug}-s{seed}", (*arm.flags, *extra), seed, arm.label) for arm in arms for seed in seeds]
    start = time.perf_counter()

    def work(task):
        folder, flags, seed, label = task
        status = run_one(folder, flags, seed, threads)
        echo(f"{label} seed {seed}: {status} ({time.perf_counter() - start:.0f} s)")

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for future in [pool.submit(work, t) for t in tasks]:
            future.result()


# ---- aggregation --------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class Curve:
    label: str
    queries: list[int]
    mean: list[float]
    se: list[float]
    finals: list[float]  # final win rate per seed
    walls: list[float]  # wall seconds per seed
    online: list[float]  # per seed: online win rate of the dueling responses, averaged over the run (E&E)
    last: dict[str, float]  # mean over seeds of the last evaluation's other figures


def aggregate(arms: list[Arm], out: Path, seeds: Sequence[int], metric: str = "win_rate") -> list[Curve]:
    """Mean ± s.e. over seeds of `metric` at every evaluation point of each arm."""
    curves = []
    for arm in arms:
        runs = [_read_jsonl(out / "runs" / f"{arm.slug}-s{seed}" / "metrics.jsonl") for seed in seeds]
        summaries = [json.loads((out / "runs" / f"{arm.slug}-s{seed}" / "summary.json").read_text()) for seed in seeds]
        points = sorted(set.intersection(*[{r["queries"] for r in rows if metric in r} for rows in runs]))
        by_q = [{r["queries"]: r[metric] for r in rows if metric in r} for rows in runs]
        stats = [mean_se([b[q] for b in by_q]) for q in points]
        last_keys = set.intersection(*[{k for k, v in rows[-1].items() if isinstance(v, (int, float))} for rows in runs])
        curves.append(
            Curve(
                label=arm.label,
                queries=points,
                mean=[m for m, _ in stats],
                se=[s for _, s in stats],
                finals=[s["final_win_rate"] for s in summaries],
                walls=[s["wall_seconds"] for s in summaries],
                online=[
                    sum(r["online_win_rate"] for r in rows if "online_win_rate" in r)
                    / max(1, sum("online_win_rate" in r for r in rows))
                    for rows in runs
                ],
                last={k: sum(rows[-1][k] for rows in runs) / len(runs) for k in sorted(last_keys)},
            )
        )
    return curves


def _fmt(m: float, se: float) -> str:
    return f"{m:.3f} ± {se:.3f}" if not math.isnan(se) else f"{m:.3f}"


def report(title: str, curves: list[Curve], seeds: Sequence[int], every: int = 1000) -> str:
    """Markdown: final win rates, the curves every `every` queries, and, for every pair of arms
    "online X" / "sea X", the queries SEA needs to reach online's final level."""
    lines = [f"### {title}", "", f"Seeds {', '.join(map(str, seeds))}; mean ± standard error.", ""]
    lines += [
        "| arm | final win rate | gain over pi_ref | online win rate, whole run | wall s per run |",
        "|---|---|---|---|---|",
    ]
    for c in curves:
        gain = mean_se([f - c.mean[0] for f in c.finals])
        lines.append(
            f"| {c.label} | {_fmt(*mean_se(c.finals))} | {gain[0]:+.3f} | {_fmt(*mean_se(c.online))} | "
            f"{sum(c.walls) / len(c.walls):.0f} |"
        )
    end = max(max(c.queries) for c in curves)
    marks = sorted(set(range(0, end, every)) | {end})
    lines += ["", "Win rate against queries (the first evaluation at or after each mark):", ""]
    lines += ["| arm | " + " | ".join(str(m) for m in marks) + " |", "|---|" + "---|" * len(marks)]
    for c in curves:
        cells = []
        for m in marks:
            i = next((i for i, q in enumerate(c.queries) if q >= m), None)
            cells.append("" if i is None else f"{c.mean[i]:.3f}")
        lines.append(f"| {c.label} | " + " | ".join(cells) + " |")
    labels = {c.label for c in curves}
    pairs = [(b, "sea" + b[len("online") :]) for b in sorted(labels) if b.startswith("online") and "sea" + b[len("online") :] in labels]
    if pairs:
        lines += ["", "Sample efficiency: queries the SEA arm needs to reach the online arm's final mean win rate:", ""]
        lines += ["| comparison | online final | SEA reaches it at | ratio | final gap (SEA - online) | s.e. combined |", "|---|---|---|---|---|---|"]
        for base, contender in pairs:
            e = efficiency(curves, base, contender)
            reach = "never" if e["contender_queries"] is None else f"{e['contender_queries']:.0f} of {e['baseline_queries']}"
            ratio = "-" if e["ratio"] is None else f"{e['ratio']:.2f}x"
            lines.append(f"| {contender} vs {base} | {e['level']:.3f} | {reach} | {ratio} | {e['final_gap']:+.3f} | {e['combined_se']:.3f} |")
    return "\n".join(lines) + "\n"


def efficiency(curves: list[Curve], baseline: str, contender: str) -> dict[str, Optional[float]]:
    """Queries the contender's mean curve needs to reach the baseline's final mean level."""
    base = next(c for c in curves if c.label == baseline)
    other = next(c for c in curves if c.label == contender)
    level = base.mean[-1]
    need = queries_to_reach(other.queries, other.mean, level)
    base_final, other_final = mean_se(base.finals), mean_se(other.finals)
    return {
        "level": level,
        "baseline_queries": base.queries[-1],
        "contender_queries": need,
        "ratio": None if need is None else need / base.queries[-1],
        "final_gap": other_final[0] - base_final[0],
        "combined_se": base_final[1] + other_final[1],
    }


def plot(curves: list[Curve], path: Path, title: str, metric_label: str = "win rate vs references (agent's inference)") -> None:
    """Curves of mean win rate against queries, shaded ± one standard error, pi_ref's level dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for c in curves:
        line = ax.plot(c.queries, c.mean, label=c.label, linewidth=1.6)[0]
        if not any(math.isnan(s) for s in c.se):
            lo = [m - s for m, s in zip(c.mean, c.se)]
            hi = [m + s for m, s in zip(c.mean, c.se)]
            ax.fill_between(c.queries, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    if curves and curves[0].queries and curves[0].queries[0] == 0:
        ax.axhline(curves[0].mean[0], color="gray", linestyle="--", linewidth=1, label="pi_ref")
    ax.set_xlabel("oracle queries")
    ax.set_ylabel(metric_label)
    ax.set_title("\n".join(textwrap.wrap(title, 64)), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
