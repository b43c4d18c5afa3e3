"""Speed: sealign's online DPO against TRL's, side by side, and where every agent spends its time.

    .venv/bin/pip install -r benchmarks/requirements-trl.txt      # TRL: a benchmark-only dependency
    .venv/bin/python benchmarks/speed.py [--reps 3] [--budget 640] [--agent-budget 320] [--threads 1] [--profile]

Part 1 alternates sealign (`train --agent online --loss dpo`) and TRL's
`trl.experimental.online_dpo.OnlineDPOTrainer`, A B A B, on the same built-in tiny GPT-2 pi_ref,
the same prompts in the same order, the same hidden reward, batch size, 2 generations per prompt,
max new tokens, sampling temperature, AdamW, learning rate, schedule and gradient clipping, fp32
on CPU with the same number of threads. Every run is a fresh process, so neither inherits the
other's caches or thread pools. A pair is compared only after checking that both consumed the same
prompts and minimised the same loss (DPO's sigmoid loss).

Time is the training loop's wall clock: TRL's `trainer.train()`, sealign's loop (its summary's
`wall_seconds`, which includes its start and end evaluation on `--holdout` prompts and the final
checkpoint; TRL evaluates and saves nothing). Loading models and building data is excluded for both.

Part 2 runs sealign's online, sea, apl and xpo agents once each and splits their seconds per
1,000 queries into the loop's phases (summary.json `seconds`), plus what no phase timer covers.

Part 3 (--profile) runs one more online DPO run of part 1's size under cProfile.

Ratios are measured within one run of this script because the machine may be shared: absolute
seconds move with the load, ratios of interleaved runs much less.
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

from sealign.loop import TIMERS  # the loop's phases: generate, select, oracle, learn, eval

AGENTS = ("online", "sea", "apl", "xpo")
TRL_LOSS = {"dpo": "sigmoid"}  # sealign's loss name -> TRL's loss_type for the same objective


# -- workers: one run each, in a fresh process ---------------------------------------------------


def pin_threads(threads: int) -> None:
    """Same intra- and inter-op threads for both frameworks (the env vars are set by the parent)."""
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)


def sealign_run(
    agent: str, budget: int, batch_size: int, temperature: float, lr: float, holdout: int, seed: int, out: Path, profile: Path | None = None
) -> dict:
    """One sealign training run; returns its summary plus the figures part 1 compares. With
    `profile`, the run goes under cProfile: PROFILE.prof for snakeviz / pstats, PROFILE.txt the top
    functions by cumulative and by own time."""
    from transformers.utils import logging as hf_logging

    from sealign.config import RunConfig, TaskConfig, TrainConfig
    from sealign.loop import train

    hf_logging.disable_progress_bar()
    cfg = TrainConfig(
        agent=agent,
        loss="dpo",
        budget=budget,
        batch_size=batch_size,
        train_temperature=temperature,
        lr=lr,
        eval_every=budget,  # evaluate at the start and the end only
        checkpoint_every=budget,
        seed=seed,
        out=str(out),
    )
    run = RunConfig(cfg, TaskConfig(n_holdout=holdout))
    if profile is None:
        summary = train(run)
    else:
        import cProfile
        import io
        import pstats

        profiler = cProfile.Profile()
        summary = profiler.runcall(train, run)
        profiler.dump_stats(profile.with_suffix(".prof"))
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text).strip_dirs()
        stats.sort_stats("cumulative").print_stats(40)
        stats.sort_stats("tottime").print_stats(25)
        profile.with_suffix(".txt").write_text(text.getvalue())
    return {**summary, "loop_seconds": summary["wall_seconds"]}


def trl_run(prompts_count: int, batch_size: int, temperature: float, lr: float, seed: int, out: Path) -> dict:
    """TRL's OnlineDPOTrainer over the first `prompts_count` prompts sealign's stream hands out."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    from sealign.config import PolicyConfig, SFTConfig, TaskConfig, TrainConfig
    from sealign.loop import PromptStream
    from sealign.policy import load_policy
    from sealign.sft import ensure_reference
    from sealign.tasks import make_task

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    task_cfg = TaskConfig()
    task = make_task(task_cfg)
    ref = ensure_reference(task_cfg, PolicyConfig(), SFTConfig(), progress=False)
    _, tokenizer = load_policy(ref.path)
    model = AutoModelForCausalLM.from_pretrained(str(ref.path), dtype=torch.float32)
    # sealign's generate encodes prompts with the tokenizer's <bos>; TRL encodes without special
    # tokens, so the <bos> is written into the prompt text to give both the same input ids.
    bos = tokenizer.bos_token + " "
    records = PromptStream(task.records("train"), seed).take(prompts_count)
    dataset = Dataset.from_dict({"prompt": [bos + r.prompt for r in records]})
    scored = {"prompts": 0, "identical": 0}

    def keywords_reward(prompts: list[str], completions: list[str], **_: object) -> list[float]:
        """The task's hidden reward r*(x, y), the same function sealign's oracle asks. TRL passes
        the first completion of every prompt, then the second (its prompts are repeated twice)."""
        n = len(prompts) // 2
        scored["prompts"] += n
        scored["identical"] += sum(a == b for a, b in zip(completions[:n], completions[n:]))
        return task.reward([p.removeprefix(bos) for p in prompts], completions)

    # sealign's defaults for what this benchmark does not set: warm-up share, clipping, beta
    defaults = TrainConfig(out="-")
    steps = -(-prompts_count // batch_size)
    args = OnlineDPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=1,
        num_train_epochs=1,
        learning_rate=lr,
        lr_scheduler_type=defaults.lr_schedule,
        warmup_steps=int(defaults.warmup_ratio * steps),
        weight_decay=0.0,
        max_grad_norm=defaults.max_grad_norm,
        optim="adamw_torch",
        beta=[defaults.beta if defaults.beta is not None else 0.1],
        loss_type=TRL_LOSS[defaults.loss],
        max_new_tokens=task.max_new_tokens,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        bf16=False,
        fp16=False,
        use_cpu=True,
        gradient_checkpointing=False,  # sealign does not checkpoint activations either
        train_sampling_strategy="sequential",  # the prompts in sealign's order
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=seed,
    )
    trainer = OnlineDPOTrainer(
        model=model, reward_funcs=keywords_reward, args=args, train_dataset=dataset, processing_class=tokenizer
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {
        "trl_version": trl.__version__,
        "loop_seconds": seconds,
        "prompts": scored["prompts"],
        "queries": scored["prompts"],  # every pair TRL generates is scored and trained on
        "identical": scored["identical"],  # pairs of two equal responses: a zero DPO gradient
        "steps": trainer.state.global_step,
        "loss": args.loss_type,
    }


def worker(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("framework", choices=["sealign", "trl"])
    p.add_argument("--agent", default="online")
    p.add_argument("--budget", type=int, default=0)
    p.add_argument("--prompts", type=int, default=0)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--temperature", type=float, required=True)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--holdout", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--result", type=Path, required=True)
    p.add_argument("--profile", type=Path, default=None)
    a = p.parse_args(argv)
    pin_threads(a.threads)
    if a.framework == "sealign":
        result = sealign_run(a.agent, a.budget, a.batch_size, a.temperature, a.lr, a.holdout, a.seed, a.run_dir, a.profile)
    else:
        result = trl_run(a.prompts, a.batch_size, a.temperature, a.lr, a.seed, a.run_dir)
    a.result.write_text(json.dumps(result))


# -- the parent: schedule, check, report -------------------------------------------------------


def spawn(args: argparse.Namespace, name: str, framework: str, **extra: object) -> dict:
    """Run one worker process with pinned threads; its output goes to NAME.log in the bench folder."""
    run_dir, result = args.out / name, args.out / f"{name}.json"
    cmd = [sys.executable, __file__, "--worker", framework, "--run-dir", str(run_dir), "--result", str(result)]
    common = dict(batch_size=args.batch_size, temperature=args.temperature, lr=args.lr, holdout=args.holdout, seed=args.seed, threads=args.threads)
    for key, value in {**common, **extra}.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false"}
    with (args.out / f"{name}.log").open("w") as log:
        done = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed (exit {done.returncode}); see {args.out / name}.log")
    return json.loads(result.read_text())


def per_1000(seconds: float, queries: int) -> float:
    return 1000.0 * seconds / queries


def check_same_work(ours: dict, theirs: dict) -> None:
    """Refuse to compare runs that did different work."""
    if ours["prompts"] != theirs["prompts"]:
        raise SystemExit(f"not the same work: sealign consumed {ours['prompts']} prompts, TRL {theirs['prompts']}")
    if TRL_LOSS.get(ours["loss"]) != theirs["loss"]:
        raise SystemExit(f"not the same loss: sealign {ours['loss']!r}, TRL {theirs['loss']!r}")


def compare(args: argparse.Namespace) -> list[dict]:
    """Part 1: A B A B ... sealign then TRL over the prompts that sealign run consumed."""
    pairs = []
    for rep in range(args.reps):
        ours = spawn(args, f"sealign-online-{rep}", "sealign", agent="online", budget=args.budget)
        theirs = spawn(args, f"trl-online-{rep}", "trl", prompts=ours["prompts"])
        check_same_work(ours, theirs)
        pair = {
            "rep": rep,
            "prompts": ours["prompts"],
            "sealign_queries": ours["queries"],
            "sealign_identical_skipped": ours["identical_skipped"],
            "trl_queries": theirs["queries"],
            "trl_identical": theirs["identical"],
            "sealign_steps": ours["steps"],
            "trl_steps": theirs["steps"],
            "sealign_s": ours["loop_seconds"],
            "trl_s": theirs["loop_seconds"],
            "sealign_s_per_1k": per_1000(ours["loop_seconds"], ours["queries"]),
            "trl_s_per_1k": per_1000(theirs["loop_seconds"], theirs["queries"]),
            "trl_version": theirs["trl_version"],
        }
        pair["ratio"] = pair["trl_s_per_1k"] / pair["sealign_s_per_1k"]  # > 1: sealign is faster per query
        # sealign never asks about two identical responses; TRL asks and trains on them
        distinct = per_1000(theirs["loop_seconds"], theirs["queries"] - theirs["identical"])
        pair["ratio_distinct"] = distinct / pair["sealign_s_per_1k"]
        pair["ratio_per_prompt"] = theirs["loop_seconds"] / ours["loop_seconds"]  # same prompts on both sides
        pairs.append(pair)
        print(
            f"rep {rep}: {pair['prompts']} prompts; sealign {pair['sealign_queries']} queries in {pair['sealign_s']:.1f} s, "
            f"TRL {pair['trl_queries']} in {pair['trl_s']:.1f} s; throughput ratio {pair['ratio']:.2f}",
            flush=True,
        )
    return pairs


def breakdown(args: argparse.Namespace) -> list[dict]:
    """Part 2: seconds per 1,000 queries of each agent, phase by phase."""
    rows = []
    for agent in args.agents:
        s = spawn(args, f"sealign-{agent}-phases", "sealign", agent=agent, budget=args.agent_budget)
        phases = {k: per_1000(s["seconds"][k], s["queries"]) for k in TIMERS}
        total = per_1000(s["loop_seconds"], s["queries"])
        rows.append({"agent": agent, "queries": s["queries"], "prompts": s["prompts"], "total": total, **phases, "other": total - sum(phases.values())})
        print(f"{agent}: {total:.1f} s per 1,000 queries", flush=True)
    return rows


def profile_online(args: argparse.Namespace) -> dict:
    """Part 3: one online DPO run of part 1's size under cProfile (profile-online-dpo.txt / .prof)."""
    s = spawn(args, "profile-online-dpo", "sealign", agent="online", budget=args.budget, profile=args.out / "profile-online-dpo")
    print(f"profile: {args.out / 'profile-online-dpo.txt'}", flush=True)
    return s


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def machine() -> str:
    """What the figures were measured on, with the load, since other work on the machine moves them."""
    import platform

    import torch
    import transformers

    return (
        f"{platform.machine()} CPU, {os.cpu_count()} cores, no GPU used; torch {torch.__version__}, "
        f"transformers {transformers.__version__}; load average {os.getloadavg()[0]:.1f}"
    )


def report(pairs: list[dict], rows: list[dict], args: argparse.Namespace, started_on: str) -> str:
    """Markdown tables of both parts, and the two targets of issue 8."""
    lines = [
        f"Machine at the start: {started_on}; at the end: load average {os.getloadavg()[0]:.1f}",
        "",
        f"sealign online DPO vs TRL {pairs[0]['trl_version']} OnlineDPOTrainer: {args.reps} pairs, A B A B, "
        f"{args.threads} thread(s) each, batch {args.batch_size}, 2 generations, lr {args.lr}, temperature {args.temperature}",
        "",
        "| rep | prompts (both) | sealign queries / steps (identical duels skipped) | TRL queries / steps (identical pairs) "
        "| sealign s / 1k queries | TRL s / 1k queries | TRL / sealign |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in pairs:
        lines.append(
            f"| {p['rep']} | {p['prompts']} | {p['sealign_queries']} / {p['sealign_steps']} ({p['sealign_identical_skipped']}) "
            f"| {p['trl_queries']} / {p['trl_steps']} ({p['trl_identical']}) "
            f"| {p['sealign_s_per_1k']:.1f} | {p['trl_s_per_1k']:.1f} | {p['ratio']:.2f} |"
        )
    med_ours = statistics.median(p["sealign_s_per_1k"] for p in pairs)
    med_theirs = statistics.median(p["trl_s_per_1k"] for p in pairs)
    lines += [
        "",
        f"Throughput ratio per query, pair by pair: median (range) {spread([p['ratio'] for p in pairs])}; "
        f"ratio of medians {med_theirs / med_ours:.2f} (target >= 2.5).",
        f"Counting only TRL's pairs of two different responses: {spread([p['ratio_distinct'] for p in pairs])}.",
        f"Same prompts, wall time TRL / sealign: {spread([p['ratio_per_prompt'] for p in pairs])}.",
        "",
        f"Seconds per 1,000 queries by phase ({args.agent_budget} queries per agent, one run each):",
        "",
        "| agent | prompts | generate | select (ERM) | oracle | learn | evaluate | other | total |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['agent']} | {r['prompts']} | "
            + " | ".join(f"{r[k]:.1f}" for k in (*TIMERS, "other", "total"))
            + " |"
        )
    by_agent = {r["agent"]: r["total"] for r in rows}
    if "sea" in by_agent and "online" in by_agent:
        lines += ["", f"SEA / online DPO seconds per query: {by_agent['sea'] / by_agent['online']:.2f} (target <= 1.5)."]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return worker(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="A B pairs (at least 3)")
    parser.add_argument("--budget", type=int, default=640, help="sealign's queries per part-1 run")
    parser.add_argument("--agent-budget", type=int, default=320, help="queries per part-2 run")
    parser.add_argument("--agents", nargs="+", default=list(AGENTS), choices=AGENTS)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature of both frameworks")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--holdout", type=int, default=32, help="sealign's evaluation prompts (start and end)")
    parser.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads of every run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="also profile one online DPO run (cProfile)")
    parser.add_argument("--out", type=Path, default=Path("runs/speed"), help="fresh folder for runs, logs and results")
    args = parser.parse_args()
    if args.reps < 3:
        parser.error("--reps must be at least 3")
    if args.out.exists():
        parser.error(f"{args.out} exists: pick a fresh --out")
    args.out.mkdir(parents=True)
    started, started_on = time.time(), machine()
    pairs = compare(args)
    rows = breakdown(args)
    if args.profile:
        profile_online(args)
    text = report(pairs, rows, args, started_on)
    (args.out / "results.json").write_text(json.dumps({"pairs": pairs, "agents": rows, "args": {k: str(v) for k, v in vars(args).items()}}, indent=1))
    (args.out / "report.md").write_text(text + "\n")
    print("\n" + text)
    print(f"\n({time.time() - started:.0f} s; runs, logs and results in {args.out})")


if __name__ == "__main__":
    main()
