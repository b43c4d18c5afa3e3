"""Collecting one policy batch (paper Alg. 1 lines 3-8): the actor proposes, the explorer selects
duels, the oracle labels them, the ledger records each label as it arrives; plus the ERM-labelled
pairs B_ERM of self-alignment (§4.3), which never reach the oracle, the budget or the ledger."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sealign.errors import SealignError
from sealign.explorer import Selection
from sealign.loop.evaluation import diagnose
from sealign.loop.session import Session
from sealign.records import Duels, Preferences
from sealign.runfolder import QueryLedger

MAX_IDLE_BATCHES = 20


@dataclass
class Answered:
    """The labels of a list of duels: which of them hold one, in order, and what it says."""

    kept: list[int]  # positions (in the duels) that were judged
    first_wins: torch.Tensor  # (len(kept),) True = the first response is preferred
    asked: int  # duels put to the oracle now (the rest were replayed from the ledger)
    mismatches: int  # replayed rows whose duel differs from the regenerated one


def replay(ledger: QueryLedger, duels: Duels, start: int) -> tuple[list[int], int, int]:
    """Match what the ledger recorded from query index `start` on to the regenerated duels, in
    order. Returns (positions that hold a recorded label, the first position never asked,
    mismatches). A duel recorded as unanswered at that index is passed over, not asked again; a
    row whose duel differs from the regenerated one (a resume that regenerates other samples)
    keeps its place and is counted."""
    rows = ledger.recorded(start, len(duels.prompts))
    kept, mismatches = [], 0
    for i, duel in enumerate(zip(duels.prompts, duels.first, duels.second)):
        if (start + len(kept), *duel) in ledger.unanswered:
            continue
        if len(kept) == len(rows):
            return kept, i, mismatches
        row = rows[len(kept)]
        mismatches += (row["prompt"], row["first"], row["second"]) != duel
        kept.append(i)
    return kept, len(duels.prompts), mismatches


def label_duels(ledger: QueryLedger, oracle, duels: Duels, start: int, step: int) -> Answered:
    """Labels for query indices start, start + 1, ...: replayed from the ledger where it holds them
    (a resume), asked of the oracle for the rest, each answer written before this returns. A duel
    the oracle could not judge gets no label and no index, and is recorded as unanswered."""
    kept, first_fresh, mismatches = replay(ledger, duels, start)
    oracle.skip(len(kept))  # the oracle's label noise is keyed by the label's index
    fresh = list(range(first_fresh, len(duels.prompts)))
    if fresh:
        tail = duels.subset(fresh)
        labels = oracle.label(tail.prompts, tail.first, tail.second)
        wins, rows, unanswered = iter(labels.first_wins.tolist()), [], []
        for i, ok in zip(fresh, labels.answered.tolist()):
            at = start + len(kept)  # the next query index: an unanswered duel takes none
            duel = (duels.prompts[i], duels.first[i], duels.second[i])
            if not ok:
                unanswered.append((at, *duel))
                continue
            rows.append(
                {"index": at, "step": step, "prompt": duel[0], "first": duel[1], "second": duel[2], "first_wins": bool(next(wins)), "version": duels.version}
            )
            kept.append(i)
        if unanswered:  # first: a kill between the two writes must not leave rows whose skips are unknown
            ledger.append_unanswered(unanswered)
        ledger.append(rows)
    z = torch.tensor([r["first_wins"] for r in ledger.recorded(start, len(kept))], dtype=torch.bool)
    return Answered(kept, z, len(fresh), mismatches)


def submit(s: Session, pairs: int) -> None:
    """Hand the actors prompts for `pairs` more pairs; they sample them with the weights they hold now."""
    position = s.stream.consumed  # names the batch: its shards' sampling seeds derive from it
    records = s.stream.take(s.cfg.pool_size(pairs))
    with s.state.timer("generate"):  # the local backend samples here; Ray only dispatches
        s.queue.append((records, s.actors.submit([r.prompt for r in records], position)))


def collect(s: Session, target: int, erm_wanted: int) -> Preferences:
    """Ask the oracle about duels until `target` labels exist in all, and gather `erm_wanted`
    ERM-labelled pairs from other prompts of the same batches (with the gate: from every prompt,
    as many as the ensemble agrees on, none drawn for them alone). Surplus duels go unasked, so an
    online batch never holds stale labels; a batch that comes up short (identical duels, a
    judge's unparseable answer) is topped up with only as many prompts as pairs are missing."""
    state, erm_batch = s.state, Preferences([], [], [])
    own_prompts = s.gated or s.anchored  # B_ERM from the oracle's own prompts: none sampled for it alone
    while state.collected < target or (len(erm_batch) < erm_wanted and not own_prompts):
        if not s.queue:
            submit(s, target - state.collected + (0 if own_prompts else erm_wanted - len(erm_batch)))
        records, pending = s.queue.popleft()
        with state.timer("generate"):  # with --async, only the wait for the actors
            candidates = pending.result()
        with state.timer("select"):
            sel = s.explorer.select(candidates)
        state.clashes += int(sel.choice.clashed.sum())
        asked = _duels_to_ask(s, sel, target - state.collected)
        taken = set() if s.gated else set(asked)  # the gate labels other pairs of the asked prompts too
        rows = [i for i in sel.rows if i not in taken][: None if s.gated else erm_wanted - len(erm_batch)]
        with state.timer("oracle"):
            answered = label_duels(s.folder.queries, s.oracle, sel.duels.subset(asked), state.collected, state.step) if asked else None
        kept = [asked[i] for i in answered.kept] if answered else []
        unjudged = len(asked) - len(kept)
        state.unanswered += unjudged  # no label, not charged: the next batch asks again
        if answered:
            s.asked, s.replay_mismatches = s.asked + answered.asked, s.replay_mismatches + answered.mismatches
        with state.timer("select"):
            figures = s.explorer.observe(sel, kept, answered.first_wins) if kept else {}
            pairs = None  # the ERM's own labels of this batch, for `diagnose`
            if s.anchored:
                rows = []
                if kept and erm_wanted > len(erm_batch):
                    anchored, by_erm = s.explorer.anchored_pairs(
                        sel, kept, answered.first_wins, erm_wanted - len(erm_batch), s.cfg.anchor_only, s.run.erm.erm_anchors
                    )
                    erm_batch = erm_batch + anchored
                    pairs = anchored.subset([i for i, chosen in enumerate(by_erm) if chosen])
            elif rows and erm_wanted > len(erm_batch):
                pairs, rows = s.explorer.erm_labelled(sel, rows, erm_wanted - len(erm_batch))
                erm_batch = erm_batch + pairs
            else:
                rows = []
        state.collected += len(kept)
        _check_progress(s, bool(kept or rows), unjudged)
        with state.timer("eval"):
            figures.update(diagnose(s, records, sel, pairs))
        staleness = s.actor.version - candidates.version
        state.record({**figures, "clash_rate": sel.choice.clashed.double().mean().item(), "staleness": staleness})
    return erm_batch


def _duels_to_ask(s: Session, sel: Selection, need: int) -> list[int]:
    """Prompts whose duel goes to the oracle, in the explorer's order of preference, until the
    quota is met; a duel of two identical answers is not asked and not charged."""
    asked = []
    for i in sel.rows:
        if len(asked) == need:
            break
        if sel.duels.first[i] == sel.duels.second[i]:
            s.state.identical_skipped += 1
        else:
            asked.append(i)
    return asked


def _check_progress(s: Session, progressed: bool, unjudged: int) -> None:
    """Stop, with the cause, a run whose batches keep yielding nothing to learn from."""
    state = s.state
    state.idle_batches = 0 if progressed else state.idle_batches + 1
    if state.idle_batches < MAX_IDLE_BATCHES:
        return
    if unjudged:
        raise SealignError(
            f"the oracle judged none of the duels of {MAX_IDLE_BATCHES} batches in a row "
            f"({state.unanswered} unparseable answers so far): check the judge and its template"
        )
    raise SealignError(
        f"the actor proposed only identical pairs for {MAX_IDLE_BATCHES} batches in a row: raise --train-temperature or --num-candidates"
    )
