"""The `sealign` command. Each subcommand is a function of validated dataclass configs."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Optional

from transformers import HfArgumentParser

from sealign.config import (
    BackendConfig,
    DataConfig,
    ERMConfig,
    EvalConfig,
    ModelConfig,
    OracleConfig,
    PolicyConfig,
    PreferenceModelConfig,
    RunConfig,
    SFTConfig,
    TaskConfig,
    TrainConfig,
)
from sealign.errors import SealignError
from sealign.progress import console, figures_table, quiet_libraries, stdout


class _HelpFormatter(argparse.HelpFormatter):
    """Each option once, in its dash form; a yes/no option as `--flag` (with `/ --no-flag` when it
    is on by default); the default appended only where the help text does not state one."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        names = [o for o in action.option_strings if "_" not in o] or action.option_strings
        if _is_flag(action):
            return names[0] + (f" / --no-{names[0][2:]}" if action.default is True else "")
        if action.nargs == 0 or not names:
            return super()._format_action_invocation(action)
        return f"{', '.join(names)} {self._format_args(action, action.dest.upper())}"

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or any(action.default is v for v in (None, False, True, argparse.SUPPRESS)) or _is_flag(action):
            return text
        return f"{text} (default: {action.default})"


def _is_flag(action: argparse.Action) -> bool:
    return action.nargs == "?" and action.const is True


class _Parser(HfArgumentParser):
    """argparse over dataclasses whose every mistake becomes one SealignError line; options are
    grouped by the dataclass they fill (its `_argument_group_name`)."""

    def __init__(self, types, **kwargs):
        kwargs.setdefault("usage", "%(prog)s [--config RECIPE.yaml] [options]")
        super().__init__(types, formatter_class=_HelpFormatter, **kwargs)
        for action in self._actions:
            if action.option_strings and all(o.startswith("--no") for o in action.option_strings) and action.const is False:
                action.help = argparse.SUPPRESS  # shown with its yes-form, as --flag / --no-flag

    def error(self, message: str) -> None:  # type: ignore[override]
        raise SealignError(message)


@dataclass
class OutputArgs:
    _argument_group_name: ClassVar[str] = "output"
    json: Optional[str] = field(default=None, metadata={"help": "also write the figures to this JSON file"})
    quiet: bool = field(default=False, metadata={"help": "no progress bars"})


@dataclass
class ServeArgs:
    _argument_group_name: ClassVar[str] = "server"
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on (0.0.0.0: every interface)"})
    port: int = field(default=8000, metadata={"help": "TCP port"})
    max_batch: int = field(default=64, metadata={"help": "most pairs (or responses) scored in one batch"})
    max_wait_ms: float = field(default=5.0, metadata={"help": "how long the first request of a batch waits for others"})
    token_env: str = field(
        default="SEALIGN_ORACLE_TOKEN", metadata={"help": "environment variable holding a bearer token to require, if set"}
    )


@dataclass
class ExportArgs:
    _argument_group_name: ClassVar[str] = "export"
    out: str = field(metadata={"help": "JSONL file to write"})
    split: str = field(default="holdout", metadata={"help": "which split", "choices": ["train", "holdout"]})


@dataclass
class StudyArgs:
    _argument_group_name: ClassVar[str] = "study"
    study: str = field(metadata={"help": "a preset (fig1, fig5, fig6, fig7, losses) or a YAML file; may be given first, without --study"})
    out: str = field(metadata={"help": "study folder: runs/ inside it are shared between studies, reports go to OUT/NAME/"})
    seeds: int = field(default=3, metadata={"help": "seeds FIRST .. FIRST+N-1 of every arm"})
    first_seed: int = field(default=0, metadata={"help": "FIRST: e.g. 100 for a screen of settings kept apart from the reported seeds 0, 1, ..."})
    jobs: int = field(default=0, metadata={"help": "runs at once, each in its own process; default: the number of cores"})
    budget: Optional[int] = field(default=None, metadata={"help": "override every arm's query budget"})
    eval_every: Optional[int] = field(default=None, metadata={"help": "override every arm's evaluation interval"})


@dataclass
class PlotArgs:
    _argument_group_name: ClassVar[str] = "plot"
    runs: list[str] = field(metadata={"help": "run folders; may be given first, without --runs"})
    out: str = field(default="runs.png", metadata={"help": "PNG file to write"})
    metric: str = field(default="win_rate", metadata={"help": "metrics.jsonl column", "choices": ["win_rate", "online_win_rate", "win_prob", "kl", "loss"]})


@dataclass
class DemoArgs:
    _argument_group_name: ClassVar[str] = "demo"
    out: str = field(default="runs/demo", metadata={"help": "folder of the demo's runs, report and plot (reused when run again)"})
    budget: int = field(default=2000, metadata={"help": "query budget of each agent"})
    eval_every: int = field(default=250, metadata={"help": "queries between evaluations"})
    seed: int = field(default=0, metadata={"help": "run seed"})


# -- commands ---------------------------------------------------------------------------------


def cmd_sft(task_cfg: TaskConfig, policy_cfg: PolicyConfig, sft_cfg: SFTConfig, out: OutputArgs) -> dict:
    """Build pi_ref (or reuse the cached one) and print where it is."""
    from sealign.sft import ensure_reference

    result = ensure_reference(task_cfg, policy_cfg, sft_cfg, progress=not out.quiet)
    return _cached(result, "pi_ref", f"SFT loss {result.meta['loss_first']:.3f} -> {result.meta['loss_last']:.3f}")


def _cached(result, what: str, figures: str) -> dict:
    """Print where a built (or reused) model lies and what its build measured; returns its meta."""
    meta = result.meta
    how = "copied from the package (checksum verified)" if result.prebuilt else "reused" if result.reused else "built"
    console.print(
        f"{what} {how}: {result.path}\n"
        f"  {meta['parameters']:,} parameters; {figures}; built in {meta['seconds']} s; peak RSS {meta['peak_rss_mb']} MB"
    )
    return {"path": str(result.path), "reused": result.reused, "prebuilt": result.prebuilt, **{k: v for k, v in meta.items() if k != "losses"}}


def cmd_pm(task_cfg: TaskConfig, pm_cfg: PreferenceModelConfig, out: OutputArgs) -> dict:
    """Build the built-in task's pretrained preference model (or reuse the cached one) and print where it is."""
    from sealign.preference_model import ensure_preference_model

    result = ensure_preference_model(task_cfg, pm_cfg, progress=not out.quiet)
    meta = result.meta
    figures = f"Bradley-Terry loss {meta['loss_first']:.3f} -> {meta['loss_last']:.3f}, agreement with the public judge {meta['public_judge_agreement']:.3f} (held out)"
    return _cached(result, "preference model", figures)


def _resolve_policy(model_cfg: ModelConfig, task_cfg: TaskConfig, policy_cfg: PolicyConfig, sft_cfg: SFTConfig) -> Path:
    if model_cfg.policy is not None:
        return Path(model_cfg.policy)
    from sealign.sft import META_FILE, reference_dir

    path = reference_dir(task_cfg, policy_cfg, sft_cfg)
    if not (path / META_FILE).is_file():
        raise SealignError("no built-in pi_ref for these settings yet: run `sealign sft` first, or pass --policy")
    return path


def _check_best_of(oracle_cfg: OracleConfig, eval_cfg: EvalConfig) -> None:
    if eval_cfg.best_of > 1 and oracle_cfg.kind not in ("task", "rm"):
        raise SealignError(f"--best-of ranks samples by the oracle's reward; a {oracle_cfg.kind} oracle has none")


def _evaluate(
    path: Path, task, records: list, oracle_cfg: OracleConfig, eval_cfg: EvalConfig, model_cfg: ModelConfig | None = None
) -> dict:
    """Win statistics of the policy at `path` on `records`, judged by the configured oracle."""
    from sealign.evaluate import evaluate_policy
    from sealign.oracles import make_oracle
    from sealign.policy import check_fits, load_policy, prompt_lengths

    model_cfg = model_cfg or ModelConfig()
    _check_best_of(oracle_cfg, eval_cfg)
    model, tokenizer = load_policy(path, model_cfg.device, model_cfg.dtype, model_cfg.chat_template)
    max_new_tokens = model_cfg.max_new_tokens or task.max_new_tokens
    check_fits(model, max(prompt_lengths(tokenizer, [r.prompt for r in records])), max_new_tokens)
    oracle = make_oracle(oracle_cfg, task)
    start = time.time()
    stats = evaluate_policy(
        model, tokenizer, oracle, records, eval_cfg, max_new_tokens=max_new_tokens, scorer=oracle.score if oracle.scores else None
    )
    return {**stats, "prompts": len(records), "seconds": round(time.time() - start, 1)}


def cmd_eval(
    task_cfg: TaskConfig,
    policy_cfg: PolicyConfig,
    sft_cfg: SFTConfig,
    oracle_cfg: OracleConfig,
    eval_cfg: EvalConfig,
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    out: OutputArgs,
) -> dict:
    """Win rate of a policy against the references (greedy unless --sample or --best-of)."""
    from sealign.tasks import make_task
    from sealign.userdata import evaluation_records

    _check_best_of(oracle_cfg, eval_cfg)
    task = make_task(task_cfg)
    # read and check user data before any model is loaded
    check = task.check_record if oracle_cfg.kind == "task" else None
    records = evaluation_records(data_cfg, check) if data_cfg.data else task.records("holdout")
    path = _resolve_policy(model_cfg, task_cfg, policy_cfg, sft_cfg)
    stats = _evaluate(path, task, records, oracle_cfg, eval_cfg, model_cfg)
    mode = f"best-of-{eval_cfg.best_of} (oracle reward)" if eval_cfg.best_of > 1 else ("sampled" if eval_cfg.sample else "greedy")
    columns = [("decoding", ""), ("prompts", ""), ("win rate", "wins over the references, ties half"), ("win prob", "mean P(policy > reference)"), ("length", "mean response words")]
    row = [mode, str(stats["prompts"]), f"{stats['win_rate']:.3f}", f"{stats['win_prob']:.3f}", f"{stats['mean_length']:.2f}"]
    stdout.print(figures_table(f"win rate vs references: {path}", columns, [row]))
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
        "arms": {"online dpo": study.BEST_ONLINE_DPO, "sea dpo": study.BEST_SEA_DPO},
    }
    demo = study.study_from_spec("demo", spec)
    _check_arms(demo)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    study.run_study(demo.arms, root, [args.seed], jobs=len(demo.arms), echo=console.print, quiet=out.quiet)
    curves = study.aggregate(demo.arms, root, [args.seed])
    levels, need = study.level_queries(curves, (1.0,))
    columns = [
        ("agent", ""), ("pi_ref", "win rate of pi_ref"), ("final", "win rate after the budget"),
        (f"to {levels[0]:.3f}", "queries to reach online's final win rate"), ("wall s", "seconds"),
    ]  # fmt: skip
    rows = []
    for c in curves:
        q = need[c.label][0]
        rows.append([c.label, f"{c.reference:.3f}", f"{c.finals[0]:.3f}", "not reached" if q is None else f"{q:.0f}", f"{c.walls[0]:.0f}"])
    stdout.print(figures_table(demo.title, columns, rows))
    study.plot(curves, root / "demo.png", demo.title)
    console.print(f"plot: {root / 'demo.png'}; runs: {root / 'runs'}")
    console.print(demo_verdict(curves, need, levels[0], args.budget))
    return {"curves": [dataclasses.asdict(c) for c in curves], "level": levels[0], "queries_to_level": need}


def demo_verdict(curves: list, need: dict, level: float, budget: int) -> str:
    """The demo's last line: what the user just saw, and what to try next."""
    sea = next(c for c in curves if c.label == "sea dpo")
    q = need[sea.label][0]
    seen = (
        f"SEA-DPO reached online DPO's final win rate ({level:.3f}) after {q:.0f} of {budget} queries"
        if q is not None
        else f"SEA-DPO did not reach online DPO's final win rate ({level:.3f}) within {budget} queries"
    )
    return f"{seen}, on one seed. Next: sealign study fig5 --out studies/fig5 --seeds 3 (every loss, three seeds)"


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
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    cfg: TrainConfig,
    backend_cfg: BackendConfig,
    pm_cfg: PreferenceModelConfig,
    out: OutputArgs,
) -> dict:
    """Align pi_ref with an agent under a query budget; writes the run folder (config.json,
    queries.jsonl, metrics.jsonl, checkpoints/, policy/, summary.json)."""
    from sealign.loop import train

    run = RunConfig(cfg, task_cfg, policy_cfg, sft_cfg, oracle_cfg, erm_cfg, model_cfg, data_cfg, pm_cfg, backend_cfg)
    if cfg.resume:  # a resumed run keeps its saved settings: refuse flags that would be ignored
        # --ref (where a copy of the run's pi_ref lies) and --no-memory-check place the run, like the backend
        placed = dataclasses.replace(model_cfg, ref=None, memory_check=True)
        given = [task_cfg, policy_cfg, sft_cfg, oracle_cfg, erm_cfg, placed, data_cfg, pm_cfg, dataclasses.replace(cfg, resume=None, out="-")]
        kept = [n for n in _changed([backend_cfg]) if n.replace("-", "_") in BackendConfig.ALGORITHM]
        changed = [*_changed(given), *kept]  # the backend's placement may change: it changes no label
        if changed:
            raise SealignError(f"--resume continues with the run's saved settings; drop {', '.join('--' + n for n in changed)}")
    summary = train(run, progress=not out.quiet)
    columns = [
        ("queries", ""), ("pi_ref", "win rate of pi_ref"), ("final", "win rate of the trained policy"), ("wall", "seconds in all"),
        ("gen", "of them sampling"), ("select", "choosing duels"), ("oracle", "labelling"), ("learn", "training"), ("eval", "evaluating"),
    ]  # fmt: skip
    t = summary["seconds"]
    row = [
        str(summary["queries"]),
        *("-" if summary[k] is None else f"{summary[k]:.3f}" for k in ("initial_win_rate", "final_win_rate")),
        str(summary["wall_seconds"]),
        *(f"{t[k]:.1f}" for k in ("generate", "select", "oracle", "learn", "eval")),
    ]
    stdout.print(figures_table(f"{summary['agent']} {summary['loss']}: {cfg.resume or cfg.out}", columns, [row]))
    return summary


def _changed(cfgs: list) -> dict[str, object]:
    """Flag name -> value of every setting that differs from its default."""
    changed = {}
    for cfg in cfgs:
        default = TrainConfig(out="-") if isinstance(cfg, TrainConfig) else type(cfg)()
        changed.update({n.replace("_", "-"): v for n, v in dataclasses.asdict(cfg).items() if v != getattr(default, n)})
    return changed


TRAIN_CONFIGS = [TaskConfig, PolicyConfig, SFTConfig, OracleConfig, ERMConfig, ModelConfig, DataConfig, TrainConfig, BackendConfig, PreferenceModelConfig]


@functools.cache
def _train_parser() -> _Parser:
    """Built once: a study parses every arm with it."""
    return _Parser(TRAIN_CONFIGS)


def run_config(flags: list[str]) -> RunConfig:
    """The RunConfig that `sealign train FLAGS` would run, e.g. run_config(["--agent", "sea", "--out", "runs/x"])."""
    *cfgs, remaining = _train_parser().parse_args_into_dataclasses(args=flags, return_remaining_strings=True)
    if remaining:
        raise SealignError(f"unrecognized arguments: {' '.join(remaining)}")
    task, policy, sft, oracle, erm, model, data, train, backend, pm = cfgs
    refuse_ignored_flags(flags, train)
    return RunConfig(train, task, policy, sft, oracle, erm, model, data, pm, backend)


def refuse_ignored_flags(typed: list[str], train: TrainConfig) -> None:
    """Typed options that would be silently ignored are refused: `--erm-*` for an agent without an
    epistemic reward model, `--gamma` with `--anchor-only`. A recipe's (`--config`) are not typed:
    a recipe describes SEA's ERM, and its other arms (`--agent online`, ...) run from it unchanged."""
    if train.resume is not None:  # the saved agent decides; changed settings are refused on resume
        return
    from sealign.agents import AGENTS

    agent = AGENTS[train.agent]
    names = dict.fromkeys(t.split("=", 1)[0].lstrip("-").replace("_", "-") for t in typed if t.startswith("--"))
    if train.anchor_only and "gamma" in names:
        raise SealignError("--anchor-only learns one anchored pair per query, whatever --gamma says: drop --gamma")
    given = [f"--{n}" for n in names if n.startswith("erm-")]
    if given and not agent.learn_erm:
        listed = ", ".join(given[:-1]) + " and " + given[-1] if len(given) > 1 else given[0]
        with_erm = ", ".join(name for name, a in AGENTS.items() if a.learn_erm)
        raise SealignError(
            f"{listed} {'configure' if len(given) > 1 else 'configures'} the epistemic reward model, which agent "
            f"{agent.name} does not have: drop {'them' if len(given) > 1 else 'it'}, or use an agent with one ({with_erm})"
        )


def _check_arms(plan) -> list[RunConfig]:
    """Every arm's flags parsed as `sealign train` would, before any run starts; returns the
    config of each arm."""
    configs = []
    for arm in plan.arms:
        try:
            configs.append(run_config([*arm.flags, "--out", "-"]))
        except SealignError as e:
            raise SealignError(f"study {plan.name}, arm {arm.label!r}: {e}") from None
    return configs


def cmd_study(args: StudyArgs, out: OutputArgs) -> dict:
    """Run a study's grid (resumable), then write OUT/NAME/report.md, curves.csv and plots."""
    from sealign import study
    from sealign.agents import AGENTS
    from sealign.models import PREFERENCE_MODEL, on_builtin_task
    from sealign.preference_model import ensure_preference_model, preference_model_dir
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
    if args.first_seed < 0:
        raise SealignError(f"--first-seed must be >= 0, got {args.first_seed}")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    root = Path(args.out)
    report_dir = root / plan.name
    report_dir.mkdir(parents=True, exist_ok=True)
    references, preference_models = {}, {}  # built once here, not by parallel runs racing to build the same one
    for run in configs:
        if run.model.policy is None:  # arms with their own --policy need no built-in pi_ref
            references.setdefault(reference_dir(run.task, run.policy, run.sft), (run.task, run.policy, run.sft))
        pm_backbone = AGENTS[run.train.agent].learn_erm and run.erm.erm_backbone == PREFERENCE_MODEL
        if on_builtin_task(run.model, run.data) and (pm_backbone or run.oracle.train_oracle == "pm"):
            preference_models.setdefault(preference_model_dir(run.task, run.pm), (run.task, run.pm))
    for task_cfg, policy_cfg, sft_cfg in references.values():
        ensure_reference(task_cfg, policy_cfg, sft_cfg, progress=not out.quiet)
    for task_cfg, pm_cfg in preference_models.values():
        ensure_preference_model(task_cfg, pm_cfg, progress=not out.quiet)
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


def cmd_serve_oracle(task_cfg: TaskConfig, oracle_cfg: OracleConfig, args: ServeArgs, out: OutputArgs) -> dict:
    """Serve an oracle over HTTP with dynamic batching until interrupted (see sealign/oracles/serve.py)."""
    from sealign.oracles import make_oracle
    from sealign.oracles.serve import serve
    from sealign.tasks import make_task

    if oracle_cfg.kind == "remote":
        raise SealignError("serve-oracle serves a local oracle (task, rm:MODEL or judge:MODEL), not another server")
    if not 0 < args.port < 65536:
        raise SealignError(f"--port must be in 1..65535, got {args.port}")
    if args.max_batch < 1 or args.max_wait_ms < 0:
        raise SealignError("--max-batch must be >= 1 and --max-wait-ms >= 0")
    oracle = make_oracle(oracle_cfg, make_task(task_cfg))
    token = os.environ.get(args.token_env)
    console.print(
        f"serving oracle {oracle_cfg.oracle} on http://{args.host}:{args.port} (max batch {args.max_batch}, "
        f"wait {args.max_wait_ms} ms, {'bearer token required' if token else 'no token'})"
    )
    serve(oracle, oracle_cfg.oracle, args.host, args.port, max_batch=args.max_batch, max_wait=args.max_wait_ms / 1000, token=token)
    return {"oracle": oracle_cfg.oracle, "host": args.host, "port": args.port}


Command = tuple[Callable[..., dict], list[type], str]
COMMANDS: dict[str, Command] = {
    "demo": (cmd_demo, [TaskConfig, PolicyConfig, SFTConfig, DemoArgs, OutputArgs], "online DPO vs SEA-DPO on the built-in task (the main job)"),
    "sft": (cmd_sft, [TaskConfig, PolicyConfig, SFTConfig, OutputArgs], "build (or reuse) the reference policy pi_ref"),
    "pm": (cmd_pm, [TaskConfig, PreferenceModelConfig, OutputArgs], "build (or reuse) the task's pretrained preference model (the ERM's backbone)"),
    "eval": (
        cmd_eval,
        [TaskConfig, PolicyConfig, SFTConfig, OracleConfig, EvalConfig, ModelConfig, DataConfig, OutputArgs],
        "win rate of a policy vs references",
    ),
    "train": (
        cmd_train,
        [*TRAIN_CONFIGS, OutputArgs],
        "run an agent under a query budget",
    ),
    "study": (cmd_study, [StudyArgs, OutputArgs], "run a grid of agents x seeds and report win-rate curves"),
    "plot": (cmd_plot, [PlotArgs, OutputArgs], "plot run folders on one figure"),
    "export": (cmd_export, [TaskConfig, ExportArgs, OutputArgs], "write a task split as JSONL"),
    "serve-oracle": (cmd_serve_oracle, [TaskConfig, OracleConfig, ServeArgs, OutputArgs], "serve an oracle over HTTP, dynamically batched"),
}


POSITIONAL = {"study": "study", "plot": "runs"}  # the field that leading bare words fill


def config_args(path: str, parser: _Parser) -> list[str]:
    """The options of a YAML recipe (`name: value` per line, names as on the command line) as
    command-line arguments. They go first, so flags given on the command line override them."""
    import yaml

    try:
        recipe = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise SealignError(f"--config {path!r}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise SealignError(f"--config {path!r}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(recipe, dict):
        raise SealignError(f"--config {path!r}: expected a mapping of option: value")
    known = {action.dest for action in parser._actions}
    argv: list[str] = []
    for key, value in recipe.items():
        name = str(key).replace("-", "_")
        if name not in known or name == "help":
            raise SealignError(f"--config {path!r}: unknown option {key!r}")
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        argv += [f"--{name}", *(str(v).lower() if isinstance(v, bool) else str(v) for v in values)]
    return argv


def _pop_config(argv: list[str]) -> tuple[list[str], Optional[str]]:
    """Take `--config FILE` (or `--config=FILE`) out of the arguments."""
    for i, arg in enumerate(argv):
        if arg == "--config":
            if i + 1 == len(argv):
                raise SealignError("--config needs a YAML file")
            return argv[:i] + argv[i + 2 :], argv[i + 1]
        if arg.startswith("--config="):
            return argv[:i] + argv[i + 1 :], arg.split("=", 1)[1]
    return argv, None


def _usage() -> str:
    lines = ["usage: sealign COMMAND [--config RECIPE.yaml] [options]   (sealign COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<12} {doc}" for name, (_, _, doc) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from sealign import __version__

        print(f"sealign {__version__}")
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
        typed, recipe = _pop_config(rest)
        rest = typed if recipe is None else [*config_args(recipe, parser), *typed]
        *cfgs, remaining = parser.parse_args_into_dataclasses(args=rest, return_remaining_strings=True)
        if remaining:
            raise SealignError(f"unrecognized arguments: {' '.join(remaining)}")
        if name == "train":
            refuse_ignored_flags(typed, next(c for c in cfgs if isinstance(c, TrainConfig)))
        out = cfgs[-1]  # every command ends with OutputArgs
        if out.json and not Path(out.json).resolve().parent.is_dir():
            raise SealignError(f"--json {out.json!r}: its folder does not exist")
        quiet_libraries()
        result = fn(*cfgs)
        if out.json:
            Path(out.json).write_text(json.dumps(result, indent=1, default=str))
        return 0
    except SealignError as e:
        print(f"sealign: error: {e}", file=sys.stderr)
        return 2

