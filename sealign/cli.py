"""The `sealign` command. Each subcommand is a function of validated dataclass configs."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from rich.table import Table
from transformers import HfArgumentParser

from sealign.config import ERMConfig, EvalConfig, OracleConfig, PolicyConfig, SFTConfig, TaskConfig, TrainConfig
from sealign.errors import SealignError
from sealign.progress import console, stdout


class _Parser(HfArgumentParser):
    """argparse over dataclasses whose every mistake becomes one SealignError line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise SealignError(message)


@dataclass
class OutputArgs:
    json: Optional[str] = field(default=None, metadata={"help": "also write the figures to this JSON file"})
    quiet: bool = field(default=False, metadata={"help": "no progress bars"})


@dataclass
class EvalArgs:
    policy: Optional[str] = field(
        default=None, metadata={"help": "policy folder (transformers format); default: the built-in pi_ref"}
    )
    data: Optional[str] = field(
        default=None, metadata={"help": "JSONL file of {prompt, reference} records; default: the task's holdout split"}
    )


@dataclass
class ExportArgs:
    out: str = field(metadata={"help": "JSONL file to write"})
    split: str = field(default="holdout", metadata={"help": "which split", "choices": ["train", "holdout"]})


@dataclass
class StudyArgs:
    study: str = field(metadata={"help": "a preset (fig1, fig5, fig6, fig7, losses) or a YAML file; may be given first, without --study"})
    out: str = field(metadata={"help": "study folder: runs/ inside it are shared between studies, reports go to OUT/NAME/"})
    seeds: int = field(default=3, metadata={"help": "seeds 0 .. N-1 of every arm"})
    jobs: int = field(default=0, metadata={"help": "runs at once, each in its own process; default: the number of cores"})
    budget: Optional[int] = field(default=None, metadata={"help": "override every arm's query budget"})
    eval_every: Optional[int] = field(default=None, metadata={"help": "override every arm's evaluation interval"})


@dataclass
class PlotArgs:
    runs: list[str] = field(metadata={"help": "run folders; may be given first, without --runs"})
    out: str = field(default="runs.png", metadata={"help": "PNG file to write"})
    metric: str = field(default="win_rate", metadata={"help": "metrics.jsonl column", "choices": ["win_rate", "online_win_rate", "win_prob", "kl", "loss"]})


@dataclass
class DemoArgs:
    out: str = field(default="runs/demo", metadata={"help": "folder of the demo's runs, report and plot (reused when run again)"})
    budget: int = field(default=2000, metadata={"help": "query budget of each agent"})
    eval_every: int = field(default=250, metadata={"help": "queries between evaluations"})
    seed: int = field(default=0, metadata={"help": "run seed"})


# -- commands ---------------------------------------------------------------------------------


def cmd_sft(task_cfg: TaskConfig, policy_cfg: PolicyConfig, sft_cfg: SFTConfig, out: OutputArgs) -> dict:
    """Build pi_ref (or reuse the cached one) and print where it is."""
    from sealign.sft import ensure_reference

    result = ensure_reference(task_cfg, policy_cfg, sft_cfg, progress=not out.quiet)
    meta = result.meta
    console.print(
        f"pi_ref {'reused' if result.reused else 'built'}: {result.path}\n"
        f"  {meta['parameters']:,} parameters; SFT loss {meta['loss_first']:.3f} -> {meta['loss_last']:.3f}; "
        f"{meta['seconds']} s; peak RSS {meta['peak_rss_mb']} MB"
    )
    return {"path": str(result.path), "reused": result.reused, **{k: v for k, v in meta.items() if k != "losses"}}


def _resolve_policy(args: EvalArgs, task_cfg: TaskConfig, policy_cfg: PolicyConfig, sft_cfg: SFTConfig) -> Path:
    if args.policy is not None:
        path = Path(args.policy)
        if not path.exists():
            raise SealignError(f"policy path {args.policy!r} does not exist")
        return path
    from sealign.sft import META_FILE, reference_dir

    path = reference_dir(task_cfg, policy_cfg, sft_cfg)
    if not (path / META_FILE).is_file():
        raise SealignError("no built-in pi_ref for these settings yet: run `sealign sft` first, or pass --policy")
    return path


def _evaluate(path: Path, task, records: list, oracle_cfg: OracleConfig, eval_cfg: EvalConfig) -> dict:
    """Win statistics of the policy at `path` on `records`, judged by the task's oracle."""
    from sealign.evaluate import evaluate_policy
    from sealign.oracles import RewardOracle
    from sealign.policy import load_policy

    model, tokenizer = load_policy(path)
    longest = max(len(tokenizer(r.prompt)["input_ids"]) for r in records) + task.max_new_tokens
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if limit is not None and longest > limit:
        raise SealignError(f"a prompt plus {task.max_new_tokens} new tokens needs {longest} positions; the policy has {limit}")
    oracle = RewardOracle(task.reward, oracle_cfg)
    start = time.time()
    stats = evaluate_policy(
        model, tokenizer, oracle, records, eval_cfg, max_new_tokens=task.max_new_tokens, scorer=oracle.score
    )
    return {**stats, "prompts": len(records), "seconds": round(time.time() - start, 1)}


def cmd_eval(
    task_cfg: TaskConfig,
    policy_cfg: PolicyConfig,
    sft_cfg: SFTConfig,
    oracle_cfg: OracleConfig,
    eval_cfg: EvalConfig,
    args: EvalArgs,
    out: OutputArgs,
) -> dict:
    """Win rate of a policy against the references (greedy unless --sample or --best-of)."""
    from sealign.data import read_records
    from sealign.tasks import make_task

    task = make_task(task_cfg)
    # read and check user data before any model is loaded
    records = read_records(args.data, check=task.check_record) if args.data else task.records("holdout")
    path = _resolve_policy(args, task_cfg, policy_cfg, sft_cfg)
    stats = _evaluate(path, task, records, oracle_cfg, eval_cfg)
    mode = f"best-of-{eval_cfg.best_of} (oracle reward)" if eval_cfg.best_of > 1 else ("sampled" if eval_cfg.sample else "greedy")
    table = Table(title=f"win rate vs references — {path}")
    for col in ("decoding", "prompts", "win_rate", "win_prob", "mean length"):
        table.add_column(col)
    table.add_row(mode, str(stats["prompts"]), f"{stats['win_rate']:.3f}", f"{stats['win_prob']:.3f}", f"{stats['mean_length']:.2f}")
    stdout.print(table)
    return {"policy": str(path), "decoding": mode, **stats}


def cmd_demo(task_cfg: TaskConfig, policy_cfg: PolicyConfig, sft_cfg: SFTConfig, args: DemoArgs, out: OutputArgs) -> dict:
    """The paper's claim on the built-in task: build (or reuse) pi_ref, run online DPO and
    SEA-DPO on the same budget and seed, and compare their win rates against queries."""
    from sealign import study

    if args.budget <= 0 or args.eval_every <= 0:
        raise SealignError("--budget and --eval-every must be positive")
    cmd_sft(task_cfg, policy_cfg, sft_cfg, out)
    passed = " ".join(f"--{name} {value}" for name, value in _changed([task_cfg, policy_cfg, sft_cfg]).items())
    spec = {
        "title": f"online DPO vs SEA-DPO, {args.budget} queries, seed {args.seed}",
        "flags": f"--budget {args.budget} --eval-every {args.eval_every} {passed}",
        "arms": {"online dpo": study.ONLINE["dpo"], "sea dpo": study.SEA["dpo"]},
    }
    demo = study.study_from_spec("demo", spec)
    _check_arms(demo)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    study.run_study(demo.arms, root, [args.seed], jobs=1, echo=console.print, quiet=out.quiet)
    curves = study.aggregate(demo.arms, root, [args.seed])
    levels, need = study.level_queries(curves, (1.0,))
    table = Table(title=demo.title)
    for col in ("agent", "win rate pi_ref", "final win rate", f"queries to reach {levels[0]:.3f} (online's final)", "wall s"):
        table.add_column(col)
    for c in curves:
        q = need[c.label][0]
        table.add_row(c.label, f"{c.reference:.3f}", f"{c.finals[0]:.3f}", "not reached" if q is None else f"{q:.0f}", f"{c.walls[0]:.0f}")
    stdout.print(table)
    study.plot(curves, root / "demo.png", demo.title)
    console.print(f"plot: {root / 'demo.png'}; runs: {root / 'runs'}")
    return {"curves": [dataclasses.asdict(c) for c in curves], "level": levels[0], "queries_to_level": need}


def cmd_export(task_cfg: TaskConfig, args: ExportArgs, out: OutputArgs) -> dict:
    """Write a split of the built-in task as JSONL, the same format user data comes in."""
    from sealign.data import write_records
    from sealign.tasks import make_task

    n = write_records(args.out, make_task(task_cfg).records(args.split))
    console.print(f"wrote {n} {args.split} records to {args.out}")
    return {"out": args.out, "records": n}


def cmd_train(
    task_cfg: TaskConfig,
    policy_cfg: PolicyConfig,
    sft_cfg: SFTConfig,
    oracle_cfg: OracleConfig,
    erm_cfg: ERMConfig,
    cfg: TrainConfig,
    out: OutputArgs,
) -> dict:
    """Align pi_ref with an agent under a query budget; writes the run folder (see DESIGN.md)."""
    from sealign.loop import train

    if cfg.resume:  # a resumed run keeps its saved settings: refuse flags that would be ignored
        changed = _changed([task_cfg, policy_cfg, sft_cfg, oracle_cfg, erm_cfg, dataclasses.replace(cfg, resume=None, out="-")])
        if changed:
            raise SealignError(f"--resume continues with the run's saved settings; drop {', '.join('--' + n for n in changed)}")

    summary = train(cfg, task_cfg, policy_cfg, sft_cfg, oracle_cfg, erm_cfg, progress=not out.quiet)
    table = Table(title=f"{summary['agent']} {summary['loss']} — {cfg.resume or cfg.out}")
    for col in ("queries", "win_rate pi_ref", "win_rate final", "wall s", "generate s", "select s", "oracle s", "learn s", "eval s"):
        table.add_column(col)
    t = summary["seconds"]
    table.add_row(
        str(summary["queries"]),
        f"{summary['initial_win_rate']:.3f}",
        f"{summary['final_win_rate']:.3f}",
        str(summary["wall_seconds"]),
        *(f"{t[k]:.1f}" for k in ("generate", "select", "oracle", "learn", "eval")),
    )
    stdout.print(table)
    return summary


def _changed(cfgs: list) -> dict[str, object]:
    """Flag name -> value of every setting that differs from its default."""
    changed = {}
    for cfg in cfgs:
        default = TrainConfig(out="-") if isinstance(cfg, TrainConfig) else type(cfg)()
        changed.update({n.replace("_", "-"): v for n, v in dataclasses.asdict(cfg).items() if v != getattr(default, n)})
    return changed


def _check_arms(plan) -> list[tuple]:
    """Every arm's flags parsed as `sealign train` would, before any run starts; returns the
    configs of each arm."""
    parser = _Parser(COMMANDS["train"][1][:-1])  # train's configs, without its output options
    configs = []
    for arm in plan.arms:
        try:
            configs.append(parser.parse_args_into_dataclasses(args=[*arm.flags, "--out", "-"]))
        except SealignError as e:
            raise SealignError(f"study {plan.name}, arm {arm.label!r}: {e}") from None
    return configs


def cmd_study(args: StudyArgs, out: OutputArgs) -> dict:
    """Run a study's grid (resumable), then write OUT/NAME/report.md, curves.csv and plots."""
    from sealign import study
    from sealign.sft import ensure_reference, reference_dir

    if args.seeds < 1:
        raise SealignError(f"--seeds must be at least 1, got {args.seeds}")
    jobs = args.jobs or os.cpu_count() or 1
    if jobs < 1:
        raise SealignError(f"--jobs must be positive, got {args.jobs}")
    overrides = " ".join(
        [*(["--budget", str(args.budget)] if args.budget is not None else []), *(["--eval-every", str(args.eval_every)] if args.eval_every is not None else [])]
    )
    plan = study.load_study(args.study, overrides)
    configs = _check_arms(plan)
    seeds = list(range(args.seeds))
    root = Path(args.out)
    report_dir = root / plan.name
    report_dir.mkdir(parents=True, exist_ok=True)
    references = {}  # built once here, not by parallel runs racing to build the same one
    for task_cfg, policy_cfg, sft_cfg, *_ in configs:
        references.setdefault(reference_dir(task_cfg, policy_cfg, sft_cfg), (task_cfg, policy_cfg, sft_cfg))
    for task_cfg, policy_cfg, sft_cfg in references.values():
        ensure_reference(task_cfg, policy_cfg, sft_cfg, progress=not out.quiet)
    echo = (lambda line: None) if out.quiet else console.print
    start = time.perf_counter()
    study.run_study(plan.arms, root, seeds, jobs, echo=echo)
    elapsed = time.perf_counter() - start
    curves = study.aggregate(plan.arms, root, seeds)
    text = study.report(plan, curves, seeds)
    (report_dir / "report.md").write_text(text)
    study.write_csv(curves, report_dir / "curves.csv", "win_rate", len(seeds))
    study.plot(curves, report_dir / "win_rate.png", plan.title, "win rate vs references (the agent's inference)")
    online = study.aggregate(plan.arms, root, seeds, metric="online_win_rate")  # E&E: the duels themselves
    study.write_csv(online, report_dir / "online_curves.csv", "online_win_rate", len(seeds))
    study.plot(online, report_dir / "online_win_rate.png", plan.title, "online win rate of the dueling responses")
    if plan.scaling:
        study.plot_scaling(curves, report_dir / "scaling.png", plan.title)
    stdout.print(text, markup=False, soft_wrap=True)
    console.print(f"report, CSV and plots in {report_dir}; {elapsed:.0f} s of wall time for the runs done now")
    return {"report": text, "curves": [dataclasses.asdict(c) for c in curves], "seconds": round(elapsed, 1)}


def cmd_plot(args: PlotArgs, out: OutputArgs) -> dict:
    """Curves of any run folders on one figure."""
    from sealign import study

    folders = [Path(r) for r in args.runs]
    for folder in folders:
        if not (folder / "metrics.jsonl").is_file():
            raise SealignError(f"{folder} is not a run folder (no metrics.jsonl)")
    if not Path(args.out).resolve().parent.is_dir():
        raise SealignError(f"--out {args.out!r}: its folder does not exist")
    curves = [study.curve_of(folder.name, [folder], args.metric) for folder in folders]
    study.plot(curves, Path(args.out), f"{args.metric} of {len(curves)} run(s)", args.metric.replace("_", " "))
    console.print(f"wrote {args.out}")
    return {"out": args.out, "runs": [str(f) for f in folders]}


Command = tuple[Callable[..., dict], list[type], str]
COMMANDS: dict[str, Command] = {
    "demo": (cmd_demo, [TaskConfig, PolicyConfig, SFTConfig, DemoArgs, OutputArgs], "online DPO vs SEA-DPO on the built-in task (the main job)"),
    "sft": (cmd_sft, [TaskConfig, PolicyConfig, SFTConfig, OutputArgs], "build (or reuse) the reference policy pi_ref"),
    "eval": (
        cmd_eval,
        [TaskConfig, PolicyConfig, SFTConfig, OracleConfig, EvalConfig, EvalArgs, OutputArgs],
        "win rate of a policy vs references",
    ),
    "train": (
        cmd_train,
        [TaskConfig, PolicyConfig, SFTConfig, OracleConfig, ERMConfig, TrainConfig, OutputArgs],
        "run an agent under a query budget",
    ),
    "study": (cmd_study, [StudyArgs, OutputArgs], "run a grid of agents x seeds and report win-rate curves"),
    "plot": (cmd_plot, [PlotArgs, OutputArgs], "plot run folders on one figure"),
    "export": (cmd_export, [TaskConfig, ExportArgs, OutputArgs], "write a task split as JSONL"),
}


POSITIONAL = {"study": "study", "plot": "runs"}  # the field that leading bare words fill


def _usage() -> str:
    lines = ["usage: sealign COMMAND [options]   (sealign COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<8} {doc}" for name, (_, _, doc) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    try:
        name, rest = argv[0], argv[1:]
        if name not in COMMANDS:
            raise SealignError(f"unknown command {name!r} (known: {', '.join(COMMANDS)})")
        fn, types, doc = COMMANDS[name]
        if name in POSITIONAL and rest and not rest[0].startswith("-"):
            n = next((i for i, token in enumerate(rest) if token.startswith("-")), len(rest))
            rest = [f"--{POSITIONAL[name]}", *rest[:n], *rest[n:]]
        parser = _Parser(types, prog=f"sealign {name}", description=doc)
        *cfgs, remaining = parser.parse_args_into_dataclasses(args=rest, return_remaining_strings=True)
        if remaining:
            raise SealignError(f"unrecognized arguments: {' '.join(remaining)}")
        out = cfgs[-1]  # every command ends with OutputArgs
        if out.json and not Path(out.json).resolve().parent.is_dir():
            raise SealignError(f"--json {out.json!r}: its folder does not exist")
        _quiet_libraries()
        result = fn(*cfgs)
        if out.json:
            Path(out.json).write_text(json.dumps(result, indent=1, default=str))
        return 0
    except SealignError as e:
        print(f"sealign: error: {e}", file=sys.stderr)
        return 2


def _quiet_libraries() -> None:
    """transformers' own progress bars and advisories would drown ours."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
