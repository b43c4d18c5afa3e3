"""The online loop (paper §3, Fig. 2 and 4): actor proposes, explorer picks a duel, oracle labels,
learner steps; with a hard query budget, evaluation, checkpoints and exact resume.

Queries are counted as labelled pairs *consumed by the learner*: for online agents that is the
number asked so far, for the offline agent (which asks for the whole budget up front) it is
how far its training has got through the data, so both share one x-axis.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sealign.actor import Actor
from sealign.agents import AGENTS
from sealign.config import EvalConfig, OracleConfig, PolicyConfig, SFTConfig, TaskConfig, TrainConfig
from sealign.data import PromptRecord
from sealign.errors import SealignError
from sealign.evaluate import evaluate_policy, win_stats
from sealign.learner import Learner, LearnerConfig, NonFiniteLoss
from sealign.oracles import RewardOracle
from sealign.policy import load_policy
from sealign.progress import progress_bar
from sealign.records import Duels
from sealign.runfolder import RunFolder
from sealign.sft import ensure_reference, weights_fingerprint
from sealign.tasks import make_task

TIMERS = ("generate", "select", "oracle", "learn", "eval")
MAX_IDLE_BATCHES = 20


class PromptStream:
    """Training prompts in a fresh shuffled order every epoch, determined by (seed, epoch)."""

    def __init__(self, records: list[PromptRecord], seed: int):
        self.records = records
        self.seed = seed
        self.epoch, self.offset = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.records))

    def take(self, n: int) -> list[PromptRecord]:
        out = []
        while len(out) < n:
            if self.offset == len(self.records):
                self.epoch, self.offset = self.epoch + 1, 0
                self._order = self._permutation()
            k = min(n - len(out), len(self.records) - self.offset)
            out.extend(self.records[i] for i in self._order[self.offset : self.offset + k])
            self.offset += k
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def restore(self, state: dict) -> None:
        self.epoch, self.offset = state["epoch"], state["offset"]
        self._order = self._permutation()


@dataclass
class LoopState:
    """Where the loop is; everything here is saved in the checkpoint."""

    collected: int = 0  # labelled pairs asked for (never above the budget)
    learned: int = 0  # labelled pairs the learner has consumed: the x-axis "queries"
    step: int = 0  # learner updates
    eval_calls: int = 0  # oracle comparisons spent on evaluation, never charged to the budget
    identical_skipped: int = 0  # sampled duels of two identical responses: not asked, not charged
    idle_batches: int = 0  # consecutive batches that had nothing to ask
    timers: dict = field(default_factory=lambda: dict.fromkeys(TIMERS, 0.0))
    since_eval: dict = field(default_factory=dict)  # sums of training figures since the last evaluation
    wall: float = 0.0  # seconds of earlier sessions of this run


def _configs_from_folder(folder: RunFolder) -> dict:
    saved = folder.read_config()
    try:
        return {
            "task": TaskConfig(**saved["task"]),
            "policy": PolicyConfig(**saved["policy"]),
            "sft": SFTConfig(**saved["sft"]),
            "oracle": OracleConfig(**saved["oracle"]),
            "train": TrainConfig(**{**saved["train"], "out": None, "resume": str(folder.path)}),
            "reference": saved["reference"],
        }
    except (KeyError, TypeError) as e:
        raise SealignError(f"{folder.path / 'config.json'}: not a sealign run config ({e})") from None


def crossed(before: int, after: int, every: int) -> bool:
    """Whether a multiple of `every` lies in (before, after]."""
    return after // every > before // every


class Timer:
    def __init__(self, timers: dict, name: str):
        self.timers, self.name = timers, name

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        self.timers[self.name] += time.perf_counter() - self.start


def train(
    cfg: TrainConfig,
    task_cfg: TaskConfig,
    policy_cfg: PolicyConfig,
    sft_cfg: SFTConfig,
    oracle_cfg: OracleConfig,
    *,
    progress: bool = True,
) -> dict:
    """Run (or resume) one agent until the budget is spent; returns the summary."""
    resume = cfg.resume is not None
    folder = RunFolder(cfg.resume or cfg.out, resume=resume)
    if resume:
        saved = _configs_from_folder(folder)
        task_cfg, policy_cfg, sft_cfg, oracle_cfg, cfg = (saved[k] for k in ("task", "policy", "sft", "oracle", "train"))
    else:
        config = {
            "task": dataclasses.asdict(task_cfg),
            "policy": dataclasses.asdict(policy_cfg),
            "sft": dataclasses.asdict(sft_cfg),
            "oracle": dataclasses.asdict(oracle_cfg),
            "train": {**dataclasses.asdict(cfg), "out": None, "resume": None},
        }
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    agent = AGENTS[cfg.agent]
    task = make_task(task_cfg)
    ref = ensure_reference(task_cfg, policy_cfg, sft_cfg, progress=progress)
    fingerprint = weights_fingerprint(ref.path)
    if resume and saved["reference"] != fingerprint:
        raise SealignError(
            f"the reference policy at {ref.path} differs from the one this run started from "
            f"(weights {fingerprint} != {saved['reference']}): resuming would change pi_ref"
        )
    if not resume:
        folder.create({**config, "reference": fingerprint})
    model, tokenizer = load_policy(ref.path)
    learner = Learner(
        model,
        tokenizer,
        LearnerConfig(
            loss=cfg.loss,
            beta=cfg.beta,
            lr=cfg.lr,
            lr_schedule=cfg.lr_schedule,
            warmup_steps=cfg.warmup_steps,
            total_steps=cfg.total_steps,
            max_grad_norm=cfg.max_grad_norm,
            loss_kwargs={"label_smoothing": cfg.label_smoothing} if cfg.loss == "dpo" else None,
        ),
    )
    actor = Actor(
        model, tokenizer, num_candidates=cfg.num_candidates, temperature=cfg.train_temperature, max_new_tokens=task.max_new_tokens
    )
    oracle = RewardOracle(task.reward, oracle_cfg)
    stream = PromptStream(task.records("train"), cfg.seed)
    holdout = task.records("holdout")
    select_gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    state = LoopState()

    checkpoint = folder.load_checkpoint() if resume else None
    if checkpoint is not None:
        learner.load_state_dict(checkpoint["learner"])
        actor.model.load_state_dict(checkpoint["actor"]["model"])
        actor.version = checkpoint["actor"]["version"]
        stream.restore(checkpoint["stream"])
        select_gen.set_state(checkpoint["rng"]["select"])
        oracle.labelled = checkpoint["oracle_labelled"]
        torch.set_rng_state(checkpoint["rng"]["torch"])
        state = LoopState(**checkpoint["loop"])
    if resume:
        folder.keep_metrics_until(state.learned if checkpoint is not None else -1)
        folder.purge_scalars_after(state.learned)

    def save_checkpoint() -> None:
        folder.save_checkpoint(
            {
                "learner": learner.state_dict(),
                "actor": {"model": actor.model.state_dict(), "version": actor.version},
                "stream": stream.state(),
                "rng": {"select": select_gen.get_state(), "torch": torch.get_rng_state()},
                "oracle_labelled": oracle.labelled,
                "loop": dataclasses.asdict(state),
            }
        )

    def evaluate() -> dict:
        with Timer(state.timers, "eval"):
            stats = evaluate_policy(
                learner.model, tokenizer, oracle, holdout, EvalConfig(), max_new_tokens=task.max_new_tokens
            )
        state.eval_calls += len(holdout)
        sums = state.since_eval
        n = max(sums.get("n", 0), 1)
        row = {
            "queries": state.learned,
            "step": state.step,
            "win_rate": stats["win_rate"],
            "win_prob": stats["win_prob"],
            "eval_length": stats["mean_length"],
            **{k: v / n for k, v in sums.items() if k not in ("n", "online_n", "online_wins")},
            "oracle_train_calls": state.collected,
            "identical_skipped": state.identical_skipped,
            "oracle_eval_calls": state.eval_calls,
            **{f"time_{k}": round(v, 3) for k, v in state.timers.items()},
            "wall": round(state.wall + time.perf_counter() - t0, 2),
        }
        if sums.get("online_n"):
            row["online_win_rate"] = sums["online_wins"] / sums["online_n"]
        state.since_eval = {}
        folder.append_metrics(row)
        folder.log_scalars(row)
        return row

    def collect(target: int) -> None:
        """Ask the oracle about one batch of duels, up to `target` labels in all (replayed from the
        ledger on resume). Surplus duels go unasked, so an online batch never holds stale labels."""
        n = cfg.batch_size
        records = stream.take(n)
        prompts = [r.prompt for r in records]
        with Timer(state.timers, "generate"):
            candidates = actor.propose(prompts)
        with Timer(state.timers, "select"):
            rewards = torch.empty(0, n, candidates.num_candidates)  # (K, P, M): no reward model for these agents
            first, second = agent.select(rewards, select_gen)
            duels = Duels.pick(candidates, first, second)
        asked, identical = duels.distinct()
        asked = asked.head(target - state.collected)
        state.identical_skipped += identical
        state.idle_batches = state.idle_batches + 1 if not asked.prompts else 0
        if state.idle_batches >= MAX_IDLE_BATCHES:
            raise SealignError(
                f"the actor proposed only identical pairs for {MAX_IDLE_BATCHES} batches in a row: "
                "raise --train-temperature or --num-candidates"
            )
        with Timer(state.timers, "oracle"):
            if asked.prompts:
                folder.queries.label(asked, state.collected, state.step, oracle)
        with Timer(state.timers, "eval"):  # E&E metric: the dueling responses against the references
            refs = [r.reference for r in records]
            probs = torch.cat([oracle.compare(prompts, duels.first, refs), oracle.compare(prompts, duels.second, refs)])
        state.eval_calls += 2 * n
        state.since_eval["online_wins"] = state.since_eval.get("online_wins", 0.0) + win_stats(probs)["win_rate"] * 2 * n
        state.since_eval["online_n"] = state.since_eval.get("online_n", 0) + 2 * n
        state.collected += len(asked.prompts)

    def learn() -> dict:
        n = min(cfg.batch_size, cfg.budget - state.learned)
        batch = folder.queries.preferences(state.learned, state.learned + n)
        with Timer(state.timers, "learn"):
            try:
                figures = learner.step(batch)
            except NonFiniteLoss as e:
                raise SealignError(f"{e}; stopped, the last good checkpoint is kept in {folder.path / 'checkpoints'}") from None
        state.learned += n
        state.step += 1
        for k, v in figures.items():
            state.since_eval[k] = state.since_eval.get(k, 0.0) + v
        state.since_eval["n"] = state.since_eval.get("n", 0) + 1
        return figures

    t0 = time.perf_counter()
    rows = folder.metrics()
    last_row = rows[-1] if rows else evaluate()  # a resumed run continues from its saved rows
    ahead = 0 if agent.online else cfg.budget  # offline: every label is asked before learning starts
    with progress_bar(progress) as bar:
        job = bar.add_task(f"{cfg.agent} {cfg.loss}", total=cfg.budget, completed=state.learned, info="")
        while state.learned < cfg.budget:
            target = min(cfg.budget, state.learned + cfg.batch_size + ahead)  # the budget is hard
            while state.collected < target:
                collect(target)
            before = state.learned
            figures = learn()
            if agent.online and state.step % cfg.sync_every == 0:
                actor.sync(learner.model, state.step)
            done = state.learned == cfg.budget
            if done or crossed(before, state.learned, cfg.eval_every):
                last_row = evaluate()
            if done or crossed(before, state.learned, cfg.checkpoint_every):
                state.wall += time.perf_counter() - t0
                t0 = time.perf_counter()
                save_checkpoint()
            bar.update(
                job, completed=state.learned, info=f"win {last_row['win_rate']:.3f}  loss {figures['loss']:.3f}"
            )
    learner.model.save_pretrained(folder.path / "policy")
    tokenizer.save_pretrained(folder.path / "policy")
    initial = folder.metrics()[0]
    summary = {
        "agent": cfg.agent,
        "loss": cfg.loss,
        "queries": state.learned,
        "labels_in_ledger": len(folder.queries),
        "labels_asked_this_session": folder.queries.asked,
        "replay_mismatches": folder.queries.replay_mismatches,
        "steps": state.step,
        "initial_win_rate": initial["win_rate"],
        "final_win_rate": last_row["win_rate"],
        "final_win_prob": last_row["win_prob"],
        "oracle_eval_calls": state.eval_calls,
        "identical_skipped": state.identical_skipped,
        "wall_seconds": round(state.wall, 1),
        "seconds": {k: round(v, 2) for k, v in state.timers.items()},
    }
    folder.write_summary(summary)
    folder.close()
    return summary
