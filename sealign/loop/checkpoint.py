"""Checkpoint and exact resume: everything that decides the next label is saved together, and a
resumed session starts from it while the ledger replays the labels asked after it."""

from __future__ import annotations

import dataclasses

from sealign.actor import Ready
from sealign.loop.session import Session
from sealign.loop.state import LoopState


def save_checkpoint(s: Session) -> None:
    s.state.restarts = s.restarts()
    s.folder.save_checkpoint(
        {
            "learner": s.learner.state_dict(),
            "actor": {"model": s.actor.model.state_dict(), "version": s.actor.version},
            "stream": s.stream.state(),
            "prefetched": [(records, pending.result()) for records, pending in s.queue],
            "explorer": s.explorer.state_dict(),
            "oracle_labelled": s.oracle.labelled,
            "loop": dataclasses.asdict(s.state),
        }
    )


def restore(s: Session) -> None:
    """Continue from the last checkpoint, if any (a run killed before its first starts over, with
    its ledger replayed); metrics rows after it are written again (and tracker points: see
    sealign.trackers)."""
    checkpoint = s.folder.load_checkpoint()
    if checkpoint is not None:
        s.learner.load_state_dict(checkpoint["learner"])
        s.actor.model.load_state_dict(checkpoint["actor"]["model"])
        s.actor.version = checkpoint["actor"]["version"]
        s.stream.restore(checkpoint["stream"])
        s.explorer.load_state_dict(checkpoint["explorer"])
        s.oracle.labelled = checkpoint["oracle_labelled"]
        s.state = LoopState(**checkpoint["loop"])
        s.queue.extend((records, Ready(candidates)) for records, candidates in checkpoint.get("prefetched", []))
        s.actors.sync(s.actor.model, s.actor.version)  # remote actors start from pi_ref's weights
    s.restarts_before = s.state.restarts
    s.folder.keep_metrics_until(s.state.learned if checkpoint is not None else -1)
