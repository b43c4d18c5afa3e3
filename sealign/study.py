"""Studies: a grid of arms (agent × loss × size × oracle mode ...) run for several seeds in
parallel processes, resumable, and aggregated into mean ± standard error curves of win rate
against queries, with reports, CSV and plots.

A study is a title and arms, each arm a label and the `sealign train` flags that define it,
grouped into panels (one sub-figure each). Presets mirror the paper's figures; a YAML file
with the same keys defines any other grid. An arm's runs live in
`OUT/runs/<slug of its flags>-s<seed>`, so studies in one folder share the runs they have in
common, and a finished run is never run twice.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from sealign.config import TrainConfig
from sealign.errors import SealignError
from sealign.progress import progress_bar
from sealign.runfolder import read_jsonl

# ---- specification --------------------------------------------------------------------------


def parse_flags(flags: Sequence[str], where: str) -> dict[str, tuple[str, ...]]:
    """`--name v ... --flag` -> {"name": ("v", ...), "flag": ()}, in order of appearance."""
    parsed: dict[str, tuple[str, ...]] = {}
    name: Optional[str] = None
    for token in flags:
        if token.startswith("--"):
            name = token[2:]
            parsed[name] = ()
        elif name is None:
            raise SealignError(f"{where}: {token!r} is not preceded by a --flag")
        else:
            parsed[name] += (token,)
    return parsed


RESERVED = ("seed", "out", "resume")  # the study sets these itself


@dataclass(frozen=True)
class Arm:
    label: str
    flags: tuple[str, ...]
    panel: str = ""

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9.]+", "-", " ".join(self.flags).replace("--", "")).strip("-")

    def option(self, name: str, default: str) -> str:
        return " ".join(parse_flags(self.flags, self.label).get(name, (default,)))


def make_arm(label: str, panel: str, flags: str, defaults: Sequence[str], overrides: str, where: str) -> Arm:
    """The arm's own flags first, then the defaults it does not set (the study's, then its
    panel's, the later winning); command-line overrides win over everything."""
    own = parse_flags(flags.split(), where)
    layers = [parse_flags(layer.split(), where) for layer in (*defaults, overrides)]
    for name in RESERVED:
        if any(name in layer for layer in (own, *layers)):
            raise SealignError(f"{where}: --{name} is set by the study itself")
    shared: dict[str, tuple[str, ...]] = {}
    for layer in layers[:-1]:
        shared.update(layer)
    merged = {**own, **{name: values for name, values in shared.items() if name not in own}, **layers[-1]}
    tokens = [t for name, values in merged.items() for t in (f"--{name}", *values)]
    return Arm(label, tuple(tokens), panel)


@dataclass(frozen=True)
class Study:
    name: str
    title: str
    arms: tuple[Arm, ...]
    scaling: bool = False  # also plot final win rate and queries-to-level across panels (Fig. 1)

    @property
    def panels(self) -> list[str]:
        return list(dict.fromkeys(a.panel for a in self.arms))


def _flag_text(value: Any, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return " ".join(map(str, value))
    raise SealignError(f"{where}: flags must be a string or a list, got {value!r}")


def _arms_of(group: dict, where: str) -> list[tuple[str, str]]:
    """(label, flags) of a group given as `arms: {label: flags}` or `grid: {flag: [values]}`."""
    if ("arms" in group) == ("grid" in group):
        raise SealignError(f"{where}: give exactly one of 'arms' or 'grid'")
    if "arms" in group:
        arms = group["arms"]
        if not isinstance(arms, dict) or not arms:
            raise SealignError(f"{where}: 'arms' must map labels to train flags")
        return [(str(label), _flag_text(flags, f"{where}, arm {label!r}")) for label, flags in arms.items()]
    grid = group["grid"]
    if not isinstance(grid, dict) or not grid or not all(isinstance(v, list) and v for v in grid.values()):
        raise SealignError(f"{where}: 'grid' must map flag names to non-empty lists of values")
    names = [str(n).lstrip("-") for n in grid]
    return [
        (" ".join(map(str, values)), " ".join(f"--{n} {v}" for n, v in zip(names, values)))
        for values in itertools.product(*grid.values())
    ]


def _check_keys(d: Any, allowed: set[str], where: str) -> None:
    if not isinstance(d, dict):
        raise SealignError(f"{where}: expected a mapping, got {type(d).__name__}")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise SealignError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})")


def study_from_spec(name: str, spec: Any, overrides: str = "") -> Study:
    """Build and check a study from its plain-data form (a preset or a parsed YAML file).

    Keys: title, flags (shared by every arm), scaling, and either arms/grid (one panel) or
    panels: a list of {title, flags, arms|grid}.
    """
    group_keys = {"title", "flags", "arms", "grid"}
    _check_keys(spec, group_keys | {"panels", "scaling"}, f"study {name}")
    if not isinstance(spec.get("title"), str):
        raise SealignError(f"study {name}: needs a 'title' string")
    shared = _flag_text(spec.get("flags"), f"study {name}")
    if "panels" in spec:
        if "arms" in spec or "grid" in spec:
            raise SealignError(f"study {name}: give either 'panels' or 'arms'/'grid', not both")
        panels = spec["panels"]
        if not isinstance(panels, list) or not panels:
            raise SealignError(f"study {name}: 'panels' must be a non-empty list")
    else:
        panels = [{k: spec[k] for k in ("arms", "grid") if k in spec}]
    arms: list[Arm] = []
    for i, panel in enumerate(panels):
        where = f"study {name}, panel {i + 1}"
        _check_keys(panel, group_keys, where)
        title = str(panel.get("title", ""))
        panel_flags = _flag_text(panel.get("flags"), where)
        for label, flags in _arms_of(panel, where):
            arms.append(make_arm(label, title, flags, (shared, panel_flags), overrides, f"{where}, arm {label!r}"))
    slugs = [(a.panel, a.label) for a in arms]
    if len(set(slugs)) != len(slugs):
        raise SealignError(f"study {name}: two arms share a panel and a label")
    scaling = spec.get("scaling", False)
    if not isinstance(scaling, bool):
        raise SealignError(f"study {name}: 'scaling' must be true or false")
    return Study(name, spec["title"], tuple(arms), scaling)


def load_study(ref: str, overrides: str = "") -> Study:
    """A preset by name, or a YAML file by path."""
    if ref in PRESETS:
        return study_from_spec(ref, PRESETS[ref], overrides)
    path = Path(ref)
    if path.suffix not in (".yaml", ".yml"):
        raise SealignError(f"unknown preset {ref!r} (known: {', '.join(PRESETS)}; or a .yaml file)")
    if not path.is_file():
        raise SealignError(f"study file {ref!r} does not exist")
    import yaml

    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise SealignError(f"study file {ref!r} is not valid YAML{at}: {getattr(e, 'problem', None) or e}") from None
    return study_from_spec(path.stem, spec, overrides)


# ---- presets: the paper's figures at built-in-task scale -------------------------------------

ONLINE = {"dpo": "--agent online --loss dpo", "ipo": "--agent online --loss ipo --beta 0.5", "slic": "--agent online --loss slic"}
OFFLINE = {loss: flags.replace("online", "offline") for loss, flags in ONLINE.items()}
SEA = {loss: flags.replace("online", "sea") for loss, flags in ONLINE.items()}
APL, XPO = "--agent apl --loss dpo", "--agent xpo --loss dpo"
CONTENDERS = {"online dpo": ONLINE["dpo"], "sea dpo": SEA["dpo"], "apl": APL, "xpo": XPO}
# The demo's arms: online DPO at its best screened setting, and SEA-DPO with the same optimiser,
# the ERM features (examples/sea-screen.yaml), the exploration schedule (examples/sea-screen-ee.yaml)
# and the number of candidates (examples/sea-screen-knobs.yaml) that did best on seeds 100-101
BEST_ONLINE_DPO = "--agent online --loss dpo --beta 0.05 --lr-schedule constant_with_warmup"
BEST_SEA_DPO = (
    BEST_ONLINE_DPO.replace("online", "sea") + " --erm-backbone pi_ref --erm-layer 0 --erm-logprobs --explore ee_ts --burn-in 100 --num-candidates 10"
)

PRESETS: dict[str, dict] = {
    "fig1": {
        "title": "SEA-DPO vs online DPO, APL and XPO at three policy sizes (paper Fig. 1)",
        "flags": "--budget 2000 --eval-every 250",
        "scaling": True,
        "panels": [{"title": f"size {size}", "flags": f"--size {size}", "arms": CONTENDERS} for size in ("nano", "micro", "tiny")],
    },
    "fig5": {
        "title": "offline, online and SEA with DPO, IPO and SLiC, and APL and XPO (paper Fig. 5)",
        "flags": "--eval-every 250",
        "panels": [
            {
                "title": loss.upper() if loss != "slic" else "SLiC",
                "arms": {
                    f"offline {loss}": OFFLINE[loss],
                    f"online {loss}": ONLINE[loss],
                    f"sea {loss}": SEA[loss],
                    **({"apl": APL, "xpo": XPO} if loss == "dpo" else {}),
                },
            }
            for loss in ONLINE
        ],
    },
    "fig6": {
        "title": "Table 1 variants 1-7 with DPO (paper Fig. 6)",
        "panels": [
            {
                "title": "policy inference (variants 1-3)",
                "arms": {
                    "1 online": ONLINE["dpo"] + " --eval-every 250",
                    "2 sea-noalign": "--agent sea-noalign --loss dpo --eval-every 500",
                    "3 sea": SEA["dpo"] + " --eval-every 250",
                },
            },
            {
                "title": "best-of-N inference (variants 4-7)",
                "flags": "--eval-every 500",
                "arms": {f"{i} {agent}": f"--agent {agent} --loss dpo" for i, agent in enumerate(("bon-passive", "bon-active", "sea-bon", "erm-bon"), 4)},
            },
        ],
    },
    "fig7": {
        "title": "exploration rules in SEA-DPO, and a noisy human oracle (paper Fig. 7, §6.4)",
        "flags": "--eval-every 250",
        "panels": [
            {
                "title": "exploration rules",
                "arms": {"sea ee_ts": SEA["dpo"] + " --explore ee_ts", "sea bai_ts": SEA["dpo"], "sea uncertainty": SEA["dpo"] + " --explore uncertainty"},
            },
            {"title": "noisy human (Bernoulli labels), 2,000 queries", "flags": "--label-mode bernoulli --budget 2000", "arms": CONTENDERS},
        ],
    },
    "losses": {
        "title": "online vs offline DAP with every loss",
        "flags": "--eval-every 250",
        "arms": {"online dpo": ONLINE["dpo"], "offline dpo": OFFLINE["dpo"], "online ipo": ONLINE["ipo"], "online slic": ONLINE["slic"], "online simpo": "--agent online --loss simpo"},
    },
}


# ---- statistics -----------------------------------------------------------------------------


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


# ---- running --------------------------------------------------------------------------------


# Every run of a study on one thread: float sums are split by the thread count, so a run's figures
# then depend neither on the machine's cores nor on how many runs share them (parallelism is --jobs).
RUN_THREADS = 1
DEFAULT_BUDGET = next(f.default for f in fields(TrainConfig) if f.name == "budget")


NAME_MAX = 255  # bytes in a file name, on the common file systems


def run_folder(out: Path, arm: Arm, seed: int) -> Path:
    """`<slug>-s<seed>`; a name too long for a file system keeps the slug's head and a hash of the
    whole slug, so arms stay apart (every name that fits is unchanged: old runs are reused)."""
    name = f"{arm.slug}-s{seed}"  # ASCII: one byte a character
    if len(name) > NAME_MAX:
        tail = f"-{hashlib.sha1(arm.slug.encode()).hexdigest()[:10]}-s{seed}"
        name = arm.slug[: NAME_MAX - len(tail)] + tail
    return out / "runs" / name


def run_one(folder: Path, flags: Sequence[str], seed: int, tick: Callable[[], None] = lambda: None) -> str:
    """Run (or resume, or skip) one seed of one arm in its own, quiet process on RUN_THREADS
    threads, calling `tick` about twice a second while it runs; returns its status."""
    if (folder / "summary.json").is_file():
        return "done before"
    resuming = (folder / "config.json").is_file()
    where = ["--resume", str(folder)] if resuming else [*flags, "--seed", str(seed), "--out", str(folder)]
    env = {**os.environ, "OMP_NUM_THREADS": str(RUN_THREADS)}
    command = [sys.executable, "-m", "sealign", "train", *where, "--quiet"]
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        while proc.poll() is None:
            tick()
            time.sleep(0.5)
        if proc.returncode != 0:
            log.seek(0)
            last = (log.read().strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
            raise SealignError(f"run {folder} failed: {last}")
    return "resumed" if resuming else "ran"


class LedgerCount:
    """Oracle labels a run's ledger holds: one line of queries.jsonl each, written as it arrives.
    Each call reads only what was appended since the last, so a progress bar can ask often."""

    def __init__(self, folder: Path):
        self.path, self.offset, self.labels = folder / "queries.jsonl", 0, 0

    def __call__(self) -> int:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return self.labels
        self.offset += chunk.rfind(b"\n") + 1  # a line still being written is counted when it ends
        self.labels += chunk.count(b"\n")
        return self.labels


def run_study(
    arms: Sequence[Arm], out: Path, seeds: Sequence[int], jobs: int, echo: Callable[[str], None] = print, quiet: bool = True
) -> None:
    """Every (arm, seed) not finished yet, `jobs` at a time, each on RUN_THREADS threads. Unless
    `quiet`, a progress bar per run counts the labels in its ledger (the runs themselves are quiet:
    several at once would draw over each other's bars). A run that fails does not stop the others:
    they finish (a rerun of the study skips them), and then the failures are raised together."""
    tasks = [(run_folder(out, arm, seed), arm, seed) for arm in arms for seed in seeds]
    start = time.perf_counter()
    failures: list[str] = []

    with progress_bar(not quiet) as bar:

        def work(task):
            folder, arm, seed = task
            began = time.perf_counter()
            job = bar.add_task(f"{arm.label} seed {seed}", total=int(arm.option("budget", str(DEFAULT_BUDGET))), info="")
            labels = LedgerCount(folder)
            try:
                status = run_one(folder, arm.flags, seed, tick=lambda: bar.update(job, completed=labels()))
            except SealignError as e:
                status = "failed"
                failures.append(str(e))
            bar.update(job, completed=labels(), info=status)
            where = f"{arm.panel}: " if arm.panel else ""
            now = time.perf_counter()
            echo(f"{where}{arm.label} seed {seed}: {status} ({now - began:.0f} s; {now - start:.0f} s into the study)")

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            for future in [pool.submit(work, t) for t in tasks]:
                future.result()
    if failures:
        raise SealignError(f"{len(failures)} of {len(tasks)} runs failed, the others finished: {'; '.join(failures)}")


# ---- aggregation ----------------------------------------------------------------------------


@dataclass
class Curve:
    label: str
    panel: str
    queries: list[int]
    mean: list[float]
    se: list[float]
    finals: list[float]  # final win rate per seed
    walls: list[float]  # wall seconds per seed
    online: list[float]  # per seed: online win rate of the dueling responses, averaged over the run (E&E)
    agent: str = ""  # from summary.json; the online arm is the baseline of a panel
    runs: list[list[float]] = field(default_factory=list)  # per seed: the metric at `queries`

    @property
    def reference(self) -> float:
        """pi_ref's level: the evaluation before any query."""
        return self.mean[0]


def curve_of(label: str, folders: Sequence[Path], metric: str = "win_rate", panel: str = "") -> Curve:
    """Mean ± s.e. over the run folders of `metric` at the evaluation points they all have."""
    for folder in folders:
        if not (folder / "summary.json").is_file():
            raise SealignError(f"{folder} is not a finished run (no summary.json)")
    runs = [read_jsonl(folder / "metrics.jsonl", repair=False) for folder in folders]  # a reader: never cuts a file
    summaries = [json.loads((folder / "summary.json").read_text()) for folder in folders]
    points = sorted(set.intersection(*[{r["queries"] for r in rows if metric in r} for rows in runs]))
    if not points:
        raise SealignError(f"{label}: the runs share no evaluation of {metric!r}")
    by_q = [{r["queries"]: r[metric] for r in rows if metric in r} for rows in runs]
    stats = [mean_se([b[q] for b in by_q]) for q in points]
    runs_at = [[b[q] for q in points] for b in by_q]
    online = [[r["online_win_rate"] for r in rows if "online_win_rate" in r] for rows in runs]
    return Curve(
        label=label,
        panel=panel,
        queries=points,
        mean=[m for m, _ in stats],
        se=[s for _, s in stats],
        finals=[s["final_win_rate"] for s in summaries],
        walls=[s["wall_seconds"] for s in summaries],
        online=[sum(o) / len(o) if o else float("nan") for o in online],
        agent=str(summaries[0].get("agent", "")),
        runs=runs_at,
    )


def aggregate(arms: Sequence[Arm], out: Path, seeds: Sequence[int], metric: str = "win_rate") -> list[Curve]:
    return [curve_of(a.label, [run_folder(out, a, s) for s in seeds], metric, a.panel) for a in arms]


def write_csv(curves: Sequence[Curve], path: Path, metric: str, seeds: int) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["panel", "arm", "metric", "queries", "mean", "se", "seeds"])
        for c in curves:
            for q, m, s in zip(c.queries, c.mean, c.se):
                w.writerow([c.panel, c.label, metric, q, f"{m:.6f}", "" if math.isnan(s) else f"{s:.6f}", seeds])


# ---- reports --------------------------------------------------------------------------------

LEVELS = (0.5, 0.75, 1.0)  # shares of the baseline's final gain over pi_ref


def baseline_of(curves: Sequence[Curve]) -> Curve:
    """The arm the others are measured against: passive online DAP when the panel has it."""
    return next((c for c in curves if c.agent == "online"), curves[0])


def level_queries(curves: Sequence[Curve], shares: Sequence[float] = LEVELS) -> tuple[list[float], dict[str, list[Optional[float]]]]:
    """Win-rate levels pi_ref + share × (baseline final − pi_ref), and the queries each arm's
    mean curve needs to reach each one (None: not reached)."""
    base = baseline_of(curves)
    levels = [base.reference + s * (base.mean[-1] - base.reference) for s in shares]
    return levels, {c.label: [queries_to_reach(c.queries, c.mean, lv) for lv in levels] for c in curves}


BOOTSTRAP_DRAWS = 2000
BOOTSTRAP_COVERAGE = 0.9


def reach_ratio_interval(
    arm: Curve, base: Curve, draws: int = BOOTSTRAP_DRAWS, coverage: float = BOOTSTRAP_COVERAGE, seed: int = 0
) -> Optional[tuple[float, float]]:  # fmt: skip
    """Percentile interval of the report's ratio (queries the arm's mean curve needs to reach the
    baseline's final level, over the baseline's own first crossing) under a paired seed bootstrap:
    each draw resamples the seeds with replacement and uses the same seeds for both arms, since a
    seed fixes the prompts both see. math.inf stands for "not reached"; draws whose baseline ends
    no better than its start (no ratio) are left out. None with fewer than two seeds. A handful of
    seeds gives few distinct draws, so the interval shows the figure's spread, not a calibrated one."""
    n = len(arm.runs)
    if n < 2 or len(base.runs) != n:
        return None
    rng = random.Random(seed)
    ratios = []
    for _ in range(draws):
        pick = [rng.randrange(n) for _ in range(n)]
        a, b = ([sum(c.runs[i][j] for i in pick) / n for j in range(len(c.queries))] for c in (arm, base))
        if b[-1] <= b[0]:
            continue
        ref = queries_to_reach(base.queries, b, b[-1])  # > 0: b starts below its final level, reached by the last point
        own = queries_to_reach(arm.queries, a, b[-1])
        ratios.append(math.inf if own is None else own / ref)
    if not ratios:
        return None
    ratios.sort()
    cut = round((1 - coverage) / 2 * len(ratios))  # draws left out at each end
    return ratios[cut], ratios[len(ratios) - 1 - cut]


def _fmt(m: float, se: float) -> str:
    return f"{m:.3f} ± {se:.3f}" if not math.isnan(se) else f"{m:.3f}"


def _panel_report(curves: Sequence[Curve], marks: int = 5) -> list[str]:
    lines = [
        "| arm | final win rate | gain over pi_ref | online win rate, whole run | wall s per run |",
        "|---|---|---|---|---|",
    ]
    for c in curves:
        lines.append(
            f"| {c.label} | {_fmt(*mean_se(c.finals))} | {mean_se(c.finals)[0] - c.reference:+.3f} | "
            f"{_fmt(*mean_se(c.online))} | {sum(c.walls) / len(c.walls):.0f} |"
        )
    end = max(max(c.queries) for c in curves)
    step = max(1, end // marks)
    points = sorted(set(range(0, end, step)) | {end})
    lines += ["", "Win rate against queries (the first evaluation at or after each mark):", ""]
    lines += ["| arm | " + " | ".join(str(m) for m in points) + " |", "|---|" + "---|" * len(points)]
    for c in curves:
        cells = []
        for m in points:
            i = next((i for i, q in enumerate(c.queries) if q >= m), None)
            cells.append("" if i is None else f"{c.mean[i]:.3f}")
        lines.append(f"| {c.label} | " + " | ".join(cells) + " |")
    base = baseline_of(curves)
    if base.mean[-1] <= base.reference:
        return lines + ["", f"({base.label} ends no better than pi_ref, so no query-efficiency levels.)"]
    levels, need = level_queries(curves)
    lines += [
        "",
        f"Queries to reach {', '.join(f'{s:.0%}' for s in LEVELS)} of {base.label}'s final gain over pi_ref "
        f"(mean curves, interpolated; ratio = arm / {base.label} at 100 %, which can be below the budget "
        f"where {base.label}'s curve touches its final level early; {BOOTSTRAP_COVERAGE:.0%} interval: of the "
        f"ratio, resampling the seeds ({BOOTSTRAP_DRAWS} draws, the same seeds for both arms, those where "
        f"{base.label} gains nothing left out; with few seeds it shows the spread, not a calibrated interval); "
        f"÷ budget = arm / {end} queries):",
        "",
        "| arm | " + " | ".join(f"{s:.0%} ({lv:.3f})" for s, lv in zip(LEVELS, levels)) + f" | ratio | {BOOTSTRAP_COVERAGE:.0%} interval | ÷ budget |",
        "|---|" + "---|" * (len(levels) + 3),
    ]
    for c in curves:
        cells = ["not reached" if q is None else f"{q:.0f}" for q in need[c.label]]
        own, ref = need[c.label][-1], need[base.label][-1]
        ratio = "-" if own is None or not ref else f"{own / ref:.2f}x"
        interval = None if c is base else reach_ratio_interval(c, base)
        ends = [] if interval is None else ["not reached" if math.isinf(r) else f"{r:.2f}x" for r in interval]
        ends = list(dict.fromkeys(ends))  # a zero-width interval prints one value
        spread = " – ".join(ends) or "-"
        of_budget = "-" if own is None else f"{own / end:.2f}x"
        lines.append(f"| {c.label} | " + " | ".join(cells) + f" | {ratio} | {spread} | {of_budget} |")
    return lines


def report(study: Study, curves: Sequence[Curve], seeds: Sequence[int]) -> str:
    """Markdown: per panel, final win rates ± s.e., the curves, and queries to reach levels."""
    lines = [f"### {study.title}", "", f"Seeds {', '.join(map(str, seeds))}; mean ± standard error over seeds."]
    for panel in study.panels:
        lines += ["", f"#### {panel}", ""] if panel else [""]
        lines += _panel_report([c for c in curves if c.panel == panel])
    runs = sum(len(c.walls) for c in curves)
    lines += ["", f"{runs} runs, {sum(sum(c.walls) for c in curves) / 3600:.2f} run-hours in all."]
    return "\n".join(lines) + "\n"


# ---- plots ----------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(curves: Sequence[Curve], path: Path, title: str, metric_label: str = "win rate vs references") -> None:
    """One sub-figure per panel: mean curves against queries, shaded ± one s.e., pi_ref dashed."""
    plt = _pyplot()
    panels = list(dict.fromkeys(c.panel for c in curves))
    width = 5.0 * len(panels) + 0.6
    fig, axes = plt.subplots(1, len(panels), figsize=(width, 4.0), dpi=90, sharey=True, squeeze=False)
    for ax, panel in zip(axes[0], panels):
        group = [c for c in curves if c.panel == panel]
        for c in group:
            line = ax.plot(c.queries, c.mean, label=c.label, linewidth=1.6)[0]
            if not any(math.isnan(s) for s in c.se):
                lo = [m - s for m, s in zip(c.mean, c.se)]
                hi = [m + s for m, s in zip(c.mean, c.se)]
                ax.fill_between(c.queries, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        if group[0].queries[0] == 0:
            ax.axhline(group[0].reference, color="gray", linestyle="--", linewidth=1, label="pi_ref")
        ax.set_xlabel("oracle queries")
        ax.set_title(panel, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(metric_label)
    fig.suptitle("\n".join(textwrap.wrap(title, int(12 * width))), fontsize=10)  # about 12 characters an inch
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_scaling(curves: Sequence[Curve], path: Path, title: str) -> None:
    """Fig. 1's two views across panels: final win rate per panel (left) and the queries each arm
    needs to reach the baseline's final level (right; hatched at the budget when not reached)."""
    plt = _pyplot()
    panels = list(dict.fromkeys(c.panel for c in curves))
    labels = list(dict.fromkeys(c.label for c in curves))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.0), dpi=90)
    width = 0.8 / len(labels)
    for j, label in enumerate(labels):
        rows = [next(c for c in curves if c.panel == p and c.label == label) for p in panels]
        stats = [mean_se(c.finals) for c in rows]
        left.errorbar(range(len(panels)), [m for m, _ in stats], yerr=[0 if math.isnan(s) else s for _, s in stats], marker="o", capsize=3, label=label)
        for i, p in enumerate(panels):
            group = [c for c in curves if c.panel == p]
            base = baseline_of(group)
            if base.mean[-1] <= base.reference:  # no gain to reach: say so instead of zero-height bars
                if j == 0:
                    right.text(i, 0, f"{base.label}\nends below pi_ref", ha="center", va="bottom", fontsize=7)
                continue
            _, need = level_queries(group, (1.0,))
            q = need[label][0]
            x = i + (j - (len(labels) - 1) / 2) * width
            budget = max(group[0].queries)
            first = label not in right.get_legend_handles_labels()[1]
            bar = right.bar(x, budget if q is None else q, width, color=f"C{j}", label=label if first else None)
            if q is None:
                bar[0].set_hatch("//")
                bar[0].set_alpha(0.35)
    refs = [next(c for c in curves if c.panel == p).reference for p in panels]
    left.plot(range(len(panels)), refs, "k_", markersize=18, linestyle="none", label="pi_ref")
    for ax in (left, right):
        ax.set_xticks(range(len(panels)), panels)
        ax.grid(alpha=0.3, axis="y")
    left.set_ylabel("final win rate vs references")
    right.set_ylabel("queries to reach online DAP's final level")
    right.set_title("hatched: not reached within the budget", fontsize=8)
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.suptitle("\n".join(textwrap.wrap(title, 90)), fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
