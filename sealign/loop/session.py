"""Building a run's parts from its RunConfig, wired along the paper's roles (Fig. 4): the Actor
proposes, the Explorer selects (and holds the ERM), the Oracle labels, the Learner steps.

Everything that can fail on bad input is built before the run folder is created, so a mistake
costs one error line and leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from sealign.actor import Actor, LocalActors
from sealign.agents import AGENTS, Agent
from sealign.config import OracleConfig, RunConfig
from sealign.data import PromptRecord, messages_of
from sealign.errors import SealignError
from sealign.explorer import Explorer
from sealign.learner import Learner, LearnerConfig
from sealign.loop.state import LoopState, PromptStream
from sealign.memory import check_memory, describe, device_capacity, estimate, format_bytes, run_workload, shape_of
from sealign.models import Models, erm_backbone_source, fingerprint, load_models, on_builtin_task, preference_model_source
from sealign.oracles import make_oracle
from sealign.policy import check_fits, sequence_logprobs
from sealign.progress import console
from sealign.runfolder import RunFolder
from sealign.tasks import make_task
from sealign.userdata import drop_long, load_user_data


@dataclass
class Session:
    """One process's hold on a run: its settings, folder, roles and counters."""

    run: RunConfig
    agent: Agent
    folder: RunFolder
    train_records: list[PromptRecord]
    holdout: list[PromptRecord]
    too_long: dict[str, int]  # prompts skipped as longer than --max-prompt-tokens, per split
    max_new_tokens: int
    judge: Any  # the Oracle that judges evaluations, always --oracle
    oracle: Any  # the Oracle that labels training duels: the judge unless --train-oracle names another
    learner: Learner
    actor: Actor  # the actors' weights live here; `actors` samples with them, locally or on Ray
    actors: Any  # LocalActors or sealign.distributed.RayActors
    explorer: Explorer
    stream: PromptStream
    state: LoopState = field(default_factory=LoopState)
    queue: deque = field(default_factory=deque)  # (records, Pending) handed to the actors, not used yet
    started: float = field(default_factory=time.perf_counter)  # this session's clock, for the wall time
    asked: int = 0  # labels asked of the oracle in this session (not saved: a resume starts at 0)
    replay_mismatches: int = 0  # ledger rows that differ from the regenerated duels on resume
    restarts_before: int = 0  # Ray restarts of earlier sessions
    trackers: Any = None  # sealign.trackers.Trackers, opened once the run's position is known

    @property
    def evaluable(self) -> bool:
        """Whether the win rate can be measured: every evaluation prompt has a reference."""
        return all(r.reference is not None for r in self.holdout)

    @property
    def cfg(self):
        return self.run.train

    @property
    def tokenizer(self):
        return self.learner.tokenizer

    @property
    def gated(self) -> bool:
        """B_ERM comes from the oracle's own prompts, as many as the ensemble agrees on (--erm-gate)."""
        return self.agent.self_align and self.run.erm.erm_gate is not None

    @property
    def anchored(self) -> bool:
        """B_ERM pairs the oracle's winners with the ERM's worst candidates of the same prompts (--erm-anchor)."""
        return self.agent.self_align and self.run.erm.erm_anchor

    def restarts(self) -> int:
        return self.restarts_before + self.actors.restarts + getattr(self.oracle, "restarts", 0)

    def wall(self) -> float:
        return self.state.wall + time.perf_counter() - self.started

    def close(self) -> None:
        """Stop the actors, an oracle that holds something (a Ray pool, the labelling page), the trackers."""
        self.actors.close()
        if self.trackers is not None:
            self.trackers.close()
        if hasattr(self.oracle, "close"):
            self.oracle.close()


def build_session(
    run: RunConfig, folder: RunFolder, saved: Optional[dict], *, progress: bool, reference_copy: Optional[str] = None
) -> Session:
    """The parts of `run`; a resume (`saved` = its config.json) must find pi_ref (in
    `reference_copy` if given), the ERM backbone and the training oracle unchanged."""
    cfg, agent = run.train, AGENTS[run.train.agent]
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    if run.oracle.kind == "human" and not on_builtin_task(run.model, run.data):
        raise SealignError("--oracle human: the task's reward judges the evaluation; on your own data give --oracle SPEC --train-oracle human")
    task = make_task(run.task)
    # user data is read and checked before any model is loaded
    user = load_user_data(run.data, task.check_record if run.oracle.kind == "task" else None) if run.data.data else None
    backbone, pooling, labeller = _frozen_sources(run, agent, progress)
    models = load_models(run.model, run.task, run.policy, run.sft, reference_copy=reference_copy, seed=cfg.seed, progress=progress)
    backbone = backbone or (models.ref_source if agent.learn_erm else None)
    # what a resume must find unchanged; pi_ref's weights are in "reference", so a backbone that
    # is pi_ref is not hashed twice
    frozen = {
        "reference": models.fingerprint,
        "erm_backbone": fingerprint(backbone) if backbone not in (None, models.ref_source) else None,
        "train_oracle": labeller,
    }
    if saved is not None:
        _check_unchanged(saved, frozen, models)
    frozen["reference_source"] = models.ref_source  # where it was, for the error of a resume elsewhere
    tokenizer, max_new_tokens = models.tokenizer, run.model.max_new_tokens or task.max_new_tokens
    limit = run.data.max_prompt_tokens
    train_records, holdout = (user.train, user.eval) if user else (task.records("train"), task.records("holdout"))
    _read_conversations(tokenizer, [*train_records, *holdout])  # before lengths are measured: the template counts
    train_records, skipped_train, longest_train = drop_long(train_records, tokenizer, limit)
    holdout, skipped_eval, longest_eval = drop_long(holdout, tokenizer, limit)
    check_fits(models.policy, max(longest_train, longest_eval), max_new_tokens)
    seq_len = max(longest_train, longest_eval) + max_new_tokens + 1  # the longest prompt, response and <eos>
    _check_memory(run, models, seq_len, progress)
    judge, oracle = _oracles(run, task, labeller)
    learner = Learner(models.policy, tokenizer, learner_config(run), ref=models.ref)
    actor = _actor(
        run, models, seq_len,
        num_candidates=cfg.num_candidates,
        temperature=cfg.train_temperature,
        max_new_tokens=max_new_tokens,
        reference=learner.ref if agent.reference_duel else None,
        generation_batch_size=run.model.generation_batch_size,
    )  # fmt: skip
    actors = _actors(run, actor)
    explorer = Explorer(
        cfg.explore,
        cfg.seed,
        run.erm if agent.learn_erm else None,
        backbone,
        pooling,
        policy_logprobs=_policy_logprobs(actor, learner),
        beta=cfg.beta,
        entropy=cfg.apl_entropy,
        device=run.model.device,
        random_clash=cfg.clash == "random",
        response_tokens=max_new_tokens + 1,  # its <eos> too
    )
    _check_erm_buffer(run, explorer, progress)
    if saved is None:  # everything that can fail on bad input has been built: now the run exists
        folder.create({**run.to_dict(), **frozen})
    if hasattr(oracle, "attach"):  # an oracle that keeps what people answered in the run folder
        oracle.attach(folder.path, cfg.budget)
    return Session(
        run, agent, folder, train_records, holdout, {"train": skipped_train, "eval": skipped_eval}, max_new_tokens,
        judge, oracle, learner, actor, actors, explorer, PromptStream(train_records, cfg.seed),
    )  # fmt: skip


def _check_memory(run: RunConfig, models: Models, seq_len: int, progress: bool) -> None:
    """Print the estimated peak memory on the policy's device; refuse a run that cannot fit."""
    device = run.model.device
    capacity = device_capacity(device)
    parts = estimate(shape_of(models.policy), run_workload(run, seq_len, capacity))
    if progress:
        console.print(describe(parts, device, capacity))
    if run.model.memory_check:
        check_memory(parts, device, capacity)


def _check_erm_buffer(run: RunConfig, explorer: Explorer, progress: bool) -> None:
    """Per-token ERM features (--erm-pooling tokens) are T (d + 1 or 2) numbers a response, kept for
    every oracle label in host memory and in each checkpoint: say how much, refuse what cannot fit."""
    backbone = explorer.backbone
    if backbone is None or not backbone.tokens:
        return
    need = 2 * run.train.budget * backbone.width * 4  # a chosen and a rejected row per label, float32
    capacity = device_capacity("cpu")
    if progress:
        console.print(f"ERM labels' per-token features: up to {format_bytes(need)} in host memory and in each checkpoint")
    if run.model.memory_check and capacity is not None and need > capacity / 2:
        raise SealignError(
            f"--erm-pooling tokens would keep {format_bytes(need)} of features for {run.train.budget} labels, over half of the "
            f"host's {format_bytes(capacity)}: pool them (--erm-pooling mean), shorten --max-new-tokens, use a smaller "
            "--erm-backbone, or pass --no-memory-check to try anyway"
        )


def _read_conversations(tokenizer, records: list[PromptRecord]) -> None:
    """Chat-format prompts reach the policy through its tokenizer's chat template (all prompts
    then do, a plain one as a user turn)."""
    if not any(messages_of(r.prompt) for r in records):
        return
    if not getattr(tokenizer, "chat_template", None):
        raise SealignError("the data holds chat-format prompts, and the policy's tokenizer has no chat template")
    tokenizer.sealign_chat = True


def _actor(run: RunConfig, models: Models, max_len: int, **kwargs) -> Actor:
    """The Actor of --actor: transformers' generate samples, or a vLLM engine on the GPU."""
    if run.model.actor != "vllm":
        return Actor(models.policy, models.tokenizer, **kwargs)
    from sealign.vllm_actor import VLLMActor, VLLMSampler

    sampler = VLLMSampler(
        models.source, models.tokenizer, dtype=run.model.dtype, memory=run.model.actor_memory, max_len=max_len, seed=run.train.seed
    )
    return VLLMActor(models.policy, models.tokenizer, sampler, **kwargs)


def _actors(run: RunConfig, actor: Actor):
    """The actor's shards, answered in this process or by Ray actors."""
    if run.backend.backend != "ray":
        return LocalActors(actor, run.backend.actors, run.train.seed)
    from sealign import distributed

    return distributed.RayActors(actor, run.backend, run.train.seed)


def learner_config(run: RunConfig) -> LearnerConfig:
    cfg = run.train
    return LearnerConfig(
        loss=cfg.loss,
        beta=cfg.beta,
        lr=cfg.lr,
        lr_schedule=cfg.lr_schedule,
        warmup_steps=cfg.warmup_steps,
        total_steps=cfg.total_steps,
        max_grad_norm=cfg.max_grad_norm,
        rollback_kl=cfg.rollback_kl,
        rollback_kl_ratio=cfg.rollback_kl_ratio,
        loss_kwargs={"label_smoothing": cfg.label_smoothing} if cfg.loss == "dpo" else None,
        optimism=cfg.xpo_alpha if AGENTS[cfg.agent].reference_duel else 0.0,
        micro_batch_size=cfg.micro_batch_size,
        gradient_checkpointing=cfg.gradient_checkpointing,
    )


def _frozen_sources(run: RunConfig, agent: Agent, progress: bool) -> tuple[Optional[str], str, Optional[str]]:
    """The ERM's backbone (None: pi_ref) and pooling, and the training oracle's spec if not --oracle."""
    backbone, pooling = erm_backbone_source(run.erm, run.task, run.pm, run.model, run.data, progress=progress) if agent.learn_erm else (None, "")
    labeller = run.oracle.train_oracle
    if labeller == "pm":
        labeller = "rm:" + preference_model_source(run.task, run.pm, run.model, run.data, "--train-oracle pm", progress=progress)
    return backbone, pooling, labeller


def _check_unchanged(saved: dict, frozen: dict, models: Models) -> None:
    if saved["reference"] != frozen["reference"]:
        was = f" ({saved['reference_source']})" if saved.get("reference_source") else ""
        raise SealignError(
            f"the reference policy {models.ref_source} differs from the one this run started from "
            f"(weights {frozen['reference']} != {saved['reference']}): resuming would change pi_ref; "
            f"point --ref at a copy of the folder it started from{was}"
        )
    changed = [k.replace("_", " ") for k in ("erm_backbone", "train_oracle") if saved.get(k) != frozen[k]]
    if changed:
        raise SealignError(f"the {' and the '.join(changed)} differ from this run's start: resuming would change them")


def _oracles(run: RunConfig, task, labeller: Optional[str]) -> tuple[Any, Any]:
    """(judge, labeller): the evaluation's oracle and the training duels' one, pooled on Ray actors
    where the backend asks for it."""
    judge = oracle = make_oracle(run.oracle, task)
    if run.oracle.kind == "human":  # people label; the task's hidden reward judges the evaluation
        judge = make_oracle(dataclasses.replace(run.oracle, oracle="task"), task)
    elif labeller is not None:
        oracle = make_oracle(_labeller_config(run.oracle, labeller), task)
    if run.backend.backend == "ray":  # imported only here: the local backend never loads Ray
        from sealign import distributed

        distributed.connect(run.backend)
        if run.backend.oracle_actors and distributed.poolable(_labeller_config(run.oracle, labeller)):
            pooled = distributed.RayOraclePool(oracle, run.backend)
            judge, oracle = (pooled, pooled) if judge is oracle else (judge, pooled)
    return judge, oracle


def _labeller_config(oracle_cfg: OracleConfig, labeller: Optional[str]) -> OracleConfig:
    if labeller is None:
        return oracle_cfg
    return dataclasses.replace(oracle_cfg, oracle=labeller, oracle_temperature=None, train_oracle=None)


def _policy_logprobs(actor: Actor, learner: Learner):
    """APL ranks with the actor's current pi_theta and with pi_ref."""

    @torch.no_grad()
    def logprobs(prompts, responses):
        policy, lengths = sequence_logprobs(actor.model, learner.tokenizer, prompts, responses)
        reference, _ = sequence_logprobs(learner.ref, learner.tokenizer, prompts, responses)
        return policy, reference, lengths

    return logprobs
