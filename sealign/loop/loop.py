"""The online loop (paper §3, Fig. 2 and 4): actor proposes, explorer picks a duel, oracle labels,
learner steps; with a hard query budget, evaluation, checkpoints and exact resume.

Queries are counted as labelled pairs *consumed by the learner*: for online agents that is the
number asked so far, for the offline agent (which asks for the whole budget up front) it is
how far its training has got through the data, so both share one x-axis.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Iterable, Optional

from sealign.config import BackendConfig, RunConfig
from sealign.errors import SealignError
from sealign.hub import model_card, push_policy
from sealign.learner import NonFiniteLoss
from sealign.loop.checkpoint import restore, save_checkpoint
from sealign.loop.collect import collect, submit
from sealign.loop.evaluation import evaluate
from sealign.loop.session import Session, build_session
from sealign.loop.state import crossed
from sealign.loop.summary import summarise
from sealign.models import save_policy
from sealign.progress import console, progress_bar, quiet_libraries
from sealign.records import Preferences
from sealign.runfolder import RunFolder
from sealign.trackers import Trackers, parse_report_to
from sealign.userdata import stage_rows


def train(run: RunConfig, *, progress: bool = False, data: Optional[Iterable[dict]] = None, eval_data: Optional[Iterable[dict]] = None) -> dict:
    """Run one agent until its budget is spent; returns the summary (also in summary.json).
    A `run` whose train.resume names a folder continues it, as `resume` does.

    `data` and `eval_data` take a `datasets.Dataset` (or any rows of dicts) in place of
    --data / --eval-data: they are staged as JSONL under $SEALIGN_HOME/data/, which config.json
    then names, so that the run resumes like any other."""
    if run.train.resume is not None:
        return resume(run.train.resume, run.backend, ref=run.model.ref, memory_check=run.model.memory_check, progress=progress)
    if data is not None or eval_data is not None:
        staged = {"data": stage_rows(data) if data is not None else run.data.data, "eval_data": stage_rows(eval_data) if eval_data is not None else run.data.eval_data}
        run = dataclasses.replace(run, data=dataclasses.replace(run.data, **staged))
    return _run(run, RunFolder(run.train.out, resume=False), None, progress)


def resume(
    folder: str | Path,
    backend: Optional[BackendConfig] = None,
    *,
    ref: Optional[str] = None,
    memory_check: Optional[bool] = None,
    progress: bool = False,
) -> dict:
    """Continue the run in `folder` with its saved settings until its budget is spent. What only
    places the work may change, as no label depends on it: `backend`; `ref`, a folder holding a
    copy of the pi_ref the run started from (on another machine, where the built-in one would be
    rebuilt with other float rounding), checked against the fingerprint in config.json; and
    `memory_check` (None: as saved)."""
    owned = RunFolder(folder, resume=True)  # locked from here on: one process per run
    try:
        saved = owned.read_config()
        run = RunConfig.from_dict(saved, str(folder), backend)
        if memory_check is not None:
            run = dataclasses.replace(run, model=dataclasses.replace(run.model, memory_check=memory_check))
    except SealignError:
        owned.close()
        raise
    return _run(run, owned, saved, progress, reference_copy=ref)


def _run(run: RunConfig, folder: RunFolder, saved: Optional[dict], progress: bool, reference_copy: Optional[str] = None) -> dict:
    quiet_libraries()
    try:
        s = build_session(run, folder, saved, progress=progress, reference_copy=reference_copy)
        try:
            if saved is not None:
                restore(s)
            s.trackers = Trackers(parse_report_to(run.train.report_to), folder.path, run.to_dict(), s.state.learned if saved else None)
            _loop(s, progress)
            save_policy(s.learner.model, s.tokenizer, folder.path / "policy")
            summary = summarise(s, folder.metrics()[-1])
            folder.write_summary(summary)
            (folder.path / "policy" / "README.md").write_text(model_card(folder.read_config(), summary), encoding="utf-8")
            if run.train.push_to_hub:
                _push(folder.path / "policy", run.train.push_to_hub)
            return summary
        finally:
            s.close()
    finally:
        folder.close()


def _push(policy: Path, repo: str) -> None:
    try:
        url = push_policy(policy, repo)
    except Exception as e:  # the hub's errors are many kinds; the run itself is complete and saved
        raise SealignError(f"--push-to-hub {repo}: {str(e).splitlines()[0] if str(e) else type(e).__name__}; the policy is saved in {policy}") from None
    console.print(f"policy pushed to {url}")


def _loop(s: Session, progress: bool) -> None:
    """Steps until the budget is spent, evaluating and checkpointing on their schedules."""
    cfg, state = s.cfg, s.state
    if not s.evaluable:
        console.print("the evaluation prompts have no references: the win rate is not measured (give --eval-data with references)")
    s.started = time.perf_counter()
    rows = s.folder.metrics()
    last_row = rows[-1] if rows else evaluate(s)  # a resumed run continues from its saved rows
    with progress_bar(progress) as bar:
        job = bar.add_task(f"{cfg.agent} {cfg.loss}", total=cfg.budget, completed=state.learned, info="")
        while state.learned < cfg.budget:
            before = state.learned
            figures = step(s)
            done = state.learned == cfg.budget
            if done or crossed(before, state.learned, cfg.eval_every):
                last_row = evaluate(s)
            if done or crossed(before, state.learned, cfg.checkpoint_every):
                state.wall, s.started = s.wall(), time.perf_counter()
                save_checkpoint(s)
            loss = f"  loss {figures['loss']:.3f}" if "loss" in figures else ""
            win = "-" if last_row["win_rate"] is None else f"{last_row['win_rate']:.3f}"
            bar.update(job, completed=state.learned, info=f"win {win}{loss}")


def step(s: Session) -> dict:
    """One step of Fig. 4: collect a labelled batch (and B_ERM), let the actors sample ahead with
    --async, one learner update, weights to the actors."""
    cfg, state, agent = s.cfg, s.state, s.agent
    n_oracle, n_erm = cfg.batch_split(state.learned)
    ahead = 0 if agent.online else cfg.budget  # offline: every label is asked before learning starts
    erm_batch = collect(s, min(cfg.budget, state.learned + n_oracle + ahead), n_erm)  # the budget is hard
    while s.run.backend.async_collect and len(s.queue) < s.run.backend.max_staleness and state.collected < cfg.budget:
        submit(s, cfg.batch_size)  # the actors sample ahead while the learner steps (§5.1)
    figures = learn(s, n_oracle, erm_batch)
    if agent.online and agent.learn_policy and (state.step % cfg.sync_every == 0 or figures.get("rolled_back")):
        s.actors.sync(s.learner.model, state.step)  # after a rollback at once: the actors must not sample the drift
    return figures


def learn(s: Session, n_oracle: int, erm_batch: Preferences) -> dict:
    """The ERM's training round and the policy's DAP step on the next `n_oracle` ledger labels
    mixed with B_ERM (Eq. 8 with §4.3's mixture; with --anchor-only, B_ERM holds each of those
    duels as its anchored pair and stands alone)."""
    state = s.state
    labelled = s.folder.queries.preferences(state.learned, state.learned + n_oracle)
    batch = erm_batch if s.cfg.anchor_only and erm_batch else labelled + erm_batch
    reference_samples = None
    if s.agent.reference_duel:  # the second response of every duel was sampled from pi_ref
        rows = s.folder.queries.recorded(state.learned, n_oracle)
        reference_samples = ([r["prompt"] for r in rows], [r["second"] for r in rows])
    with state.timer("select"):
        figures = s.explorer.train_round()
    if s.agent.learn_policy:
        with state.timer("learn"):
            try:
                figures.update(s.learner.step(batch, reference_samples))
            except NonFiniteLoss as e:
                raise SealignError(f"{e}; stopped, the last good checkpoint is kept in {s.folder.path / 'checkpoints'}") from None
    figures["erm_fraction"] = len(erm_batch) / len(batch)
    state.learned += n_oracle
    state.step += 1
    state.record(figures)
    if state.step % s.cfg.log_every == 0:
        s.trackers.log({f"train/{k}": v for k, v in figures.items()}, step=state.learned)
    return figures

