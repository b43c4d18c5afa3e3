"""The online loop (paper §3, Fig. 2 and 4): actor proposes, explorer picks a duel, oracle labels,
learner steps; with a hard query budget, evaluation, checkpoints and exact resume.

Queries are counted as labelled pairs *consumed by the learner*: for online agents that is the
number asked so far, for the offline agent (which asks for the whole budget up front) it is
how far its training has got through the data, so both share one x-axis.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sealign.actor import Actor, LocalActors, Pending, Ready
from sealign.agents import AGENTS
from sealign.config import (
    BackendConfig,
    DataConfig,
    ERMConfig,
    EvalConfig,
    ModelConfig,
    OracleConfig,
    PolicyConfig,
    PreferenceModelConfig,
    SFTConfig,
    TaskConfig,
    TrainConfig,
)
from sealign.data import PromptRecord
from sealign.errors import SealignError
from sealign.evaluate import evaluate_policy, win_stats
from sealign.learner import Learner, LearnerConfig, NonFiniteLoss
from sealign.models import erm_backbone_source, fingerprint, load_models, preference_model_source, save_policy
from sealign.oracles import make_oracle
from sealign.policy import check_fits, sequence_logprobs
from sealign.progress import progress_bar
from sealign.explorer import Explorer
from sealign.records import Preferences
from sealign.runfolder import RunFolder
from sealign.tasks import make_task
from sealign.userdata import drop_long, load_user_data

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

    @property
    def consumed(self) -> int:
        """Prompts handed out so far, over all epochs: what a benchmark compares between frameworks."""
        return self.epoch * len(self.records) + self.offset

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
    unanswered: int = 0  # duels the oracle could not judge (an unparseable judge answer): not charged
    clashes: int = 0  # prompts whose second response came from the clash rule (sealign.explore)
    restarts: int = 0  # Ray actors (policy or oracle) restarted after they died; their work was re-issued
    idle_batches: int = 0  # consecutive batches that had nothing to ask
    timers: dict = field(default_factory=lambda: dict.fromkeys(TIMERS, 0.0))
    since_eval: dict = field(default_factory=dict)  # figure -> [sum, count] since the last evaluation
    wall: float = 0.0  # seconds of earlier sessions of this run

    def record(self, figures: dict[str, float]) -> None:
        for key, value in figures.items():
            total, n = self.since_eval.get(key, (0.0, 0))
            self.since_eval[key] = [total + value, n + 1]

    def averages(self) -> dict[str, float]:
        """Mean of every figure since the last evaluation, then forget them."""
        out = {key: total / n for key, (total, n) in self.since_eval.items()}
        self.since_eval = {}
        return out


def _configs_from_folder(folder: RunFolder) -> dict:
    saved = folder.read_config()
    try:
        return {
            "task": TaskConfig(**saved["task"]),
            "policy": PolicyConfig(**saved["policy"]),
            "sft": SFTConfig(**saved["sft"]),
            "oracle": OracleConfig(**saved["oracle"]),
            "erm": ERMConfig(**saved.get("erm", {})),
            "model": ModelConfig(**saved.get("model", {})),
            "data": DataConfig(**saved.get("data", {})),
            "pm": PreferenceModelConfig(**saved.get("pm", {})),
            "backend": saved.get("backend", {}),
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
    erm_cfg: ERMConfig | None = None,
    model_cfg: ModelConfig | None = None,
    data_cfg: DataConfig | None = None,
    backend_cfg: BackendConfig | None = None,
    *,
    pm_cfg: PreferenceModelConfig | None = None,
    progress: bool = True,
) -> dict:
    """Run (or resume) one agent until the budget is spent; returns the summary.

    A resumed run keeps its saved settings, except where `backend_cfg` places the work (backend,
    cluster, resources): that changes no label."""
    erm_cfg, model_cfg, data_cfg = erm_cfg or ERMConfig(), model_cfg or ModelConfig(), data_cfg or DataConfig()
    backend_cfg, pm_cfg = backend_cfg or BackendConfig(), pm_cfg or PreferenceModelConfig()
    resume = cfg.resume is not None
    folder = RunFolder(cfg.resume or cfg.out, resume=resume)
    if resume:
        saved = _configs_from_folder(folder)
        task_cfg, policy_cfg, sft_cfg, oracle_cfg, erm_cfg, model_cfg, data_cfg, pm_cfg, cfg = (
            saved[k] for k in ("task", "policy", "sft", "oracle", "erm", "model", "data", "pm", "train")
        )
        backend_cfg = dataclasses.replace(backend_cfg, **{k: v for k, v in saved["backend"].items() if k in BackendConfig.ALGORITHM})
    else:
        config = {
            "task": dataclasses.asdict(task_cfg),
            "policy": dataclasses.asdict(policy_cfg),
            "sft": dataclasses.asdict(sft_cfg),
            "oracle": dataclasses.asdict(oracle_cfg),
            "erm": dataclasses.asdict(erm_cfg),
            "model": dataclasses.asdict(model_cfg),
            "data": dataclasses.asdict(data_cfg),
            "pm": dataclasses.asdict(pm_cfg),
            "backend": dataclasses.asdict(backend_cfg),
            "train": {**dataclasses.asdict(cfg), "out": None, "resume": None},
        }
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    agent = AGENTS[cfg.agent]
    task = make_task(task_cfg)
    # user data is read and checked before any model is loaded
    user = load_user_data(data_cfg, task.check_record if oracle_cfg.kind == "task" else None) if data_cfg.data else None
    backbone, pooling = erm_backbone_source(erm_cfg, task_cfg, pm_cfg, model_cfg, data_cfg, progress=progress) if agent.learn_erm else (None, "")
    labeller_spec = oracle_cfg.train_oracle
    if labeller_spec == "pm":
        labeller_spec = "rm:" + preference_model_source(task_cfg, pm_cfg, model_cfg, data_cfg, "--train-oracle pm", progress=progress)
    models = load_models(model_cfg, task_cfg, policy_cfg, sft_cfg, progress=progress)
    backbone = backbone or (models.ref_source if agent.learn_erm else None)
    if resume and saved["reference"] != models.fingerprint:
        raise SealignError(
            f"the reference policy {models.ref_source} differs from the one this run started from "
            f"(weights {models.fingerprint} != {saved['reference']}): resuming would change pi_ref"
        )
    # what else a resume must find unchanged (pi_ref's weights are checked above, so a backbone
    # that is pi_ref is not hashed twice)
    frozen = {"erm_backbone": fingerprint(backbone) if backbone not in (None, models.ref_source) else None, "train_oracle": labeller_spec}
    changed = [k.replace("_", " ") for k, v in frozen.items() if resume and saved.get(k) != v]
    if changed:
        raise SealignError(f"the {' and the '.join(changed)} differ from this run's start: resuming would change them")
    model, tokenizer = models.policy, models.tokenizer
    max_new_tokens = model_cfg.max_new_tokens or task.max_new_tokens
    limit = data_cfg.max_prompt_tokens
    train_records, skipped_train, longest_train = drop_long(user.train if user else task.records("train"), tokenizer, limit)
    holdout, skipped_eval, longest_eval = drop_long(user.eval if user else task.records("holdout"), tokenizer, limit)
    check_fits(model, max(longest_train, longest_eval), max_new_tokens)
    judge = make_oracle(oracle_cfg, task)  # judges the evaluation, always
    oracle = judge  # labels the training duels: the same oracle unless --train-oracle names another
    if labeller_spec is not None:
        oracle_cfg = dataclasses.replace(oracle_cfg, oracle=labeller_spec, oracle_temperature=None, train_oracle=None)
        oracle = make_oracle(oracle_cfg, task)
    on_ray = backend_cfg.backend == "ray"
    if on_ray:  # imported only here: the local backend never loads Ray
        from sealign import distributed

        distributed.connect(backend_cfg)
        if backend_cfg.oracle_actors and distributed.poolable(oracle_cfg):
            pooled = distributed.RayOraclePool(oracle, backend_cfg)
            judge, oracle = (pooled, pooled) if judge is oracle else (judge, pooled)
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
            optimism=cfg.xpo_alpha if cfg.agent == "xpo" else 0.0,
        ),
        ref=models.ref,
    )
    actor = Actor(
        model,
        tokenizer,
        num_candidates=cfg.num_candidates,
        temperature=cfg.train_temperature,
        max_new_tokens=max_new_tokens,
        reference=learner.ref if cfg.agent == "xpo" else None,
    )
    if not on_ray:
        actors = LocalActors(actor, backend_cfg.actors, cfg.seed)
    else:
        actors = distributed.RayActors(actor, backend_cfg, cfg.seed)

    @torch.no_grad()
    def policy_logprobs(prompts, responses):  # APL ranks with the actor's current pi_theta and pi_ref
        policy, lengths = sequence_logprobs(actor.model, tokenizer, prompts, responses)
        reference, _ = sequence_logprobs(learner.ref, tokenizer, prompts, responses)
        return policy, reference, lengths

    explorer = Explorer(
        cfg.explore,
        cfg.seed,
        erm_cfg if agent.learn_erm else None,
        backbone,
        pooling,
        policy_logprobs=policy_logprobs,
        beta=cfg.beta,
        entropy=cfg.apl_entropy,
        device=model_cfg.device,
    )
    if not resume:  # everything that can fail on bad input has been built: now the run exists
        folder.create({**config, "reference": models.fingerprint, **frozen})
    stream = PromptStream(train_records, cfg.seed)
    state = LoopState()
    # batches handed to the actors and not used yet: empty between steps unless --async
    queue: deque[tuple[list[PromptRecord], Pending]] = deque()

    checkpoint = folder.load_checkpoint() if resume else None
    if checkpoint is not None:
        learner.load_state_dict(checkpoint["learner"])
        actor.model.load_state_dict(checkpoint["actor"]["model"])
        actor.version = checkpoint["actor"]["version"]
        stream.restore(checkpoint["stream"])
        explorer.load_state_dict(checkpoint["explorer"])
        oracle.labelled = checkpoint["oracle_labelled"]
        state = LoopState(**checkpoint["loop"])
        queue.extend((records, Ready(candidates)) for records, candidates in checkpoint.get("prefetched", []))
        actors.sync(actor.model, actor.version)  # remote actors start from pi_ref's weights
    restarts_before = state.restarts

    def restarts() -> int:
        return restarts_before + actors.restarts + getattr(oracle, "restarts", 0)
    if resume:
        folder.keep_metrics_until(state.learned if checkpoint is not None else -1)
        folder.purge_scalars_after(state.learned)

    def save_checkpoint() -> None:
        state.restarts = restarts()
        folder.save_checkpoint(
            {
                "learner": learner.state_dict(),
                "actor": {"model": actor.model.state_dict(), "version": actor.version},
                "stream": stream.state(),
                "prefetched": [(records, pending.result()) for records, pending in queue],
                "explorer": explorer.state_dict(),
                "oracle_labelled": oracle.labelled,
                "loop": dataclasses.asdict(state),
            }
        )

    eval_cfg = EvalConfig(best_of=cfg.eval_bon)
    scorer = explorer.mean_reward if cfg.eval_bon > 1 else None
    gated = agent.self_align and erm_cfg.erm_gate is not None  # B_ERM comes from the oracle's own prompts

    def evaluate() -> dict:
        with Timer(state.timers, "eval"):
            stats = evaluate_policy(
                learner.model, tokenizer, judge, holdout, eval_cfg, max_new_tokens=max_new_tokens, scorer=scorer
            )
        state.eval_calls += len(holdout)
        row = {
            "queries": state.learned,
            "step": state.step,
            "win_rate": stats["win_rate"],
            "win_prob": stats["win_prob"],
            "eval_length": stats["mean_length"],
            **state.averages(),
            "oracle_train_calls": state.collected,
            "identical_skipped": state.identical_skipped,
            "unanswered": state.unanswered,
            "eval_unanswered": stats["unanswered"],
            "clashes": state.clashes,
            "restarts": restarts(),
            "oracle_eval_calls": state.eval_calls,
            **{f"time_{k}": round(v, 3) for k, v in state.timers.items()},
            "wall": round(state.wall + time.perf_counter() - t0, 2),
        }
        folder.append_metrics(row)
        folder.log_scalars(row)
        return row

    def submit_next(pairs: int = cfg.batch_size) -> None:
        """Hand the actors prompts for `pairs` more pairs; they sample them with the weights they
        hold now."""
        position = stream.consumed  # names the batch: its shards' sampling seeds derive from it
        records = stream.take(cfg.pool_size(pairs))
        with Timer(state.timers, "generate"):  # the local backend samples here; Ray only dispatches
            queue.append((records, actors.submit([r.prompt for r in records], position)))

    def collect(target: int, erm_wanted: int) -> Preferences:
        """Ask the oracle about duels until `target` labels exist in all (replayed from the ledger
        on resume), and gather `erm_wanted` ERM-labelled pairs from other prompts of the same
        batches (with the gate: from every prompt, as many as the ensemble agrees on, none drawn
        for them alone). Surplus duels go unasked, so an online batch never holds stale labels; a batch
        that comes up short (identical duels, a judge's unparseable answer) is topped up with only
        as many prompts as pairs are still missing."""
        erm_batch = Preferences([], [], [])
        while state.collected < target or (len(erm_batch) < erm_wanted and not gated):
            if not queue:
                submit_next(target - state.collected + (0 if gated else erm_wanted - len(erm_batch)))
            records, pending = queue.popleft()
            with Timer(state.timers, "generate"):  # with --async, only the wait for the actors
                candidates = pending.result()
            with Timer(state.timers, "select"):
                sel = explorer.select(candidates)
            state.clashes += int(sel.choice.clashed.sum())
            asked, need = [], target - state.collected
            for i in sel.rows:  # in the explorer's order of preference, until the quota is met
                if len(asked) == need:
                    break
                if sel.duels.first[i] == sel.duels.second[i]:
                    state.identical_skipped += 1  # two identical answers: not asked, not charged
                else:
                    asked.append(i)
            taken = set() if gated else set(asked)  # the gate labels other pairs of the asked prompts too
            rows = [i for i in sel.rows if i not in taken][: None if gated else erm_wanted - len(erm_batch)]
            with Timer(state.timers, "oracle"):
                kept, z = folder.queries.label(sel.duels.subset(asked), state.collected, state.step, oracle) if asked else ([], None)
            unjudged = len(asked) - len(kept)
            state.unanswered += unjudged  # no label, not charged: the next batch asks again
            asked = [asked[i] for i in kept]
            with Timer(state.timers, "select"):
                figures = explorer.observe(sel, asked, z) if asked else {}
                pairs = None
                if rows and erm_wanted > len(erm_batch):
                    pairs, rows = explorer.erm_labelled(sel, rows, erm_wanted - len(erm_batch))
                    erm_batch = erm_batch + pairs
                else:
                    rows = []
            state.collected += len(asked)
            state.idle_batches = 0 if asked or rows else state.idle_batches + 1
            if state.idle_batches >= MAX_IDLE_BATCHES:
                raise SealignError(
                    f"the oracle judged none of the duels of {MAX_IDLE_BATCHES} batches in a row "
                    f"({state.unanswered} unparseable answers so far): check the judge and its template"
                    if unjudged
                    else f"the actor proposed only identical pairs for {MAX_IDLE_BATCHES} batches in a row: "
                    "raise --train-temperature or --num-candidates"
                )
            with Timer(state.timers, "eval"):
                figures.update(diagnose(records, sel, pairs))
            state.record(
                {**figures, "clash_rate": sel.choice.clashed.double().mean().item(), "staleness": actor.version - candidates.version}
            )
        return erm_batch

    def diagnose(records: list, sel, erm_pairs: Preferences | None) -> dict[str, float]:
        """Figures the agent never learns from, judged by the oracle and charged as evaluation:
        the E&E online win rate (the dueling responses vs the references), how often the hidden
        oracle agrees with the ERM's own labels, and whether the selected duels have larger true
        margins |r*(y) - r*(y')| than random pairs of the same candidates (the informativeness
        active exploration aims for)."""
        prompts, refs = [r.prompt for r in records], [r.reference for r in records]
        probs = torch.cat([judge.compare(prompts, sel.duels.first, refs), judge.compare(prompts, sel.duels.second, refs)])
        state.eval_calls += 2 * len(prompts)
        out = {"online_win_rate": win_stats(probs)["win_rate"]}
        if erm_pairs is not None and len(erm_pairs):
            probs = judge.compare(erm_pairs.prompts, erm_pairs.chosen, erm_pairs.rejected)
            state.eval_calls += len(erm_pairs)
            judged = probs[~torch.isnan(probs)]  # a judge may leave some unanswered
            if len(judged):
                out["erm_label_accuracy"] = (judged > 0.5).double().mean().item()
        if agent.learn_erm and judge.scores:
            m = sel.candidates.num_candidates
            true = judge.score(*sel.candidates.flat()).reshape(len(prompts), m)  # (P, M)
            rows_ = torch.arange(len(prompts))
            chosen_gap = (true[rows_, sel.choice.first] - true[rows_, sel.choice.second]).abs()
            side = torch.Generator().manual_seed(cfg.seed * 1_000_003 + state.collected)  # leaves the run's RNGs alone
            a, b = torch.randint(m, (2, len(prompts)), generator=side)
            random_gap = (true[rows_, a] - true[rows_, b]).abs()
            out.update(
                margin_selected=chosen_gap.mean().item(),
                margin_random=random_gap.mean().item(),
                selected_margin_larger=(chosen_gap > random_gap).double().mean().item(),
                first_is_oracle_best=(true[rows_, sel.choice.first] == true.max(1).values).double().mean().item(),
            )
        return out

    def learn(n_oracle: int, erm_batch: Preferences) -> dict:
        batch = folder.queries.preferences(state.learned, state.learned + n_oracle) + erm_batch
        reference_samples = None
        if cfg.agent == "xpo":  # the second response of every XPO duel was sampled from pi_ref
            rows = folder.queries.rows[state.learned : state.learned + n_oracle]
            reference_samples = ([r["prompt"] for r in rows], [r["second"] for r in rows])
        with Timer(state.timers, "select"):
            figures = explorer.train_round()
        if agent.learn_policy:
            with Timer(state.timers, "learn"):
                try:
                    figures.update(learner.step(batch, reference_samples))
                except NonFiniteLoss as e:
                    raise SealignError(f"{e}; stopped, the last good checkpoint is kept in {folder.path / 'checkpoints'}") from None
        figures["erm_fraction"] = len(erm_batch) / len(batch)
        state.learned += n_oracle
        state.step += 1
        state.record(figures)
        return figures

    t0 = time.perf_counter()
    rows = folder.metrics()
    last_row = rows[-1] if rows else evaluate()  # a resumed run continues from its saved rows
    ahead = 0 if agent.online else cfg.budget  # offline: every label is asked before learning starts
    with progress_bar(progress) as bar:
        job = bar.add_task(f"{cfg.agent} {cfg.loss}", total=cfg.budget, completed=state.learned, info="")
        while state.learned < cfg.budget:
            n_oracle, n_erm = cfg.batch_split(state.learned)
            target = min(cfg.budget, state.learned + n_oracle + ahead)  # the budget is hard
            erm_batch = collect(target, n_erm)
            while backend_cfg.async_collect and len(queue) < backend_cfg.max_staleness and state.collected < cfg.budget:
                submit_next()  # the actors sample ahead while the learner steps (§5.1)
            before = state.learned
            figures = learn(n_oracle, erm_batch)
            if agent.online and agent.learn_policy and state.step % cfg.sync_every == 0:
                actors.sync(learner.model, state.step)
            done = state.learned == cfg.budget
            if done or crossed(before, state.learned, cfg.eval_every):
                last_row = evaluate()
            if done or crossed(before, state.learned, cfg.checkpoint_every):
                state.wall += time.perf_counter() - t0
                t0 = time.perf_counter()
                save_checkpoint()
            loss = f"  loss {figures['loss']:.3f}" if "loss" in figures else ""
            bar.update(job, completed=state.learned, info=f"win {last_row['win_rate']:.3f}{loss}")
    save_policy(learner.model, tokenizer, folder.path / "policy")
    initial = folder.metrics()[0]
    summary = {
        "agent": cfg.agent,
        "loss": cfg.loss,
        "explore": cfg.explore,
        "eval_bon": cfg.eval_bon,
        "queries": state.learned,
        "prompts": stream.consumed,  # answered by the actor: identical and surplus duels are never asked
        "labels_in_ledger": len(folder.queries),
        "labels_asked_this_session": folder.queries.asked,
        "replay_mismatches": folder.queries.replay_mismatches,
        "steps": state.step,
        "initial_win_rate": initial["win_rate"],
        "final_win_rate": last_row["win_rate"],
        "final_win_prob": last_row["win_prob"],
        "oracle_eval_calls": state.eval_calls,
        "identical_skipped": state.identical_skipped,
        "unanswered": state.unanswered,
        "prompts_too_long": {"train": skipped_train, "eval": skipped_eval},
        "clashes": state.clashes,
        "restarts": restarts(),
        "backend": backend_cfg.backend,
        "wall_seconds": round(state.wall, 1),
        "seconds": {k: round(v, 2) for k, v in state.timers.items()},
    }
    folder.write_summary(summary)
    folder.close()
    actors.close()
    if on_ray:
        distributed.release(oracle)
    return summary
