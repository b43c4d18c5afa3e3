"""summary.json: what a finished run reports, read by studies and by `sealign.read_run`."""

from __future__ import annotations

from sealign.loop.session import Session


def summarise(s: Session, last_row: dict) -> dict:
    cfg, state = s.cfg, s.state
    return {
        "agent": cfg.agent,
        "loss": cfg.loss,
        "explore": cfg.explore,
        "eval_bon": cfg.eval_bon,
        "queries": state.learned,
        "prompts": s.stream.consumed,  # answered by the actor: identical and surplus duels are never asked
        "labels_in_ledger": len(s.folder.queries),
        "labels_asked_this_session": s.asked,
        "replay_mismatches": s.replay_mismatches,
        "steps": state.step,
        "initial_win_rate": s.folder.metrics()[0]["win_rate"],
        "final_win_rate": last_row["win_rate"],
        "final_win_prob": last_row["win_prob"],
        "oracle_eval_calls": state.eval_calls,
        "identical_skipped": state.identical_skipped,
        "unanswered": state.unanswered,
        "prompts_too_long": s.too_long,
        "clashes": state.clashes,
        "restarts": s.restarts(),
        "rollbacks": None if s.learner.guard is None else s.learner.guard.rollbacks,  # --rollback-kl's returns
        "backend": s.run.backend.backend,
        "wall_seconds": round(state.wall, 1),
        "seconds": {k: round(v, 2) for k, v in state.timers.items()},
    }
