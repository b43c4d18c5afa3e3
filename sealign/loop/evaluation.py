"""What a run measures and never learns from (paper §5.2, Metrics): the win rate of its
inference against the references, and per batch the E&E online win rate and the diagnostics of
the ERM. Every comparison here is charged as evaluation, never to the query budget."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch

from sealign.config import EvalConfig
from sealign.evaluate import evaluate_policy, win_stats
from sealign.records import Preferences

if TYPE_CHECKING:
    from sealign.explorer import Selection
    from sealign.loop.session import Session


def evaluate(s: "Session") -> dict:
    """Judge the learner's policy (best-of-N under the ERM for BoN agents) on the held-out prompts
    and append the metrics row: the queries, these win statistics, the averages of the batch
    figures since the last evaluation, the counters and the clocks."""
    state, cfg = s.state, s.cfg
    scorer = s.explorer.mean_reward if cfg.eval_bon > 1 else None
    stats = dict.fromkeys(("win_rate", "win_prob", "mean_length"), None) | {"unanswered": 0}  # no references: not measured
    if s.evaluable:
        with state.timer("eval"):
            stats = evaluate_policy(
                s.learner.model, s.tokenizer, s.judge, s.holdout, EvalConfig(best_of=cfg.eval_bon), max_new_tokens=s.max_new_tokens,
                scorer=scorer, samples=cfg.eval_samples,
            )  # fmt: skip
        state.eval_calls += len(s.holdout)
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
        "restarts": s.restarts(),
        "oracle_eval_calls": state.eval_calls,
        **{f"time_{k}": round(v, 3) for k, v in state.timers.items()},
        "wall": round(s.wall(), 2),
    }
    s.folder.append_metrics(row)
    s.trackers.log(row, step=state.learned)
    completions = [{"queries": state.learned, "step": state.step, **c} for c in stats.get("samples", [])]
    if completions:
        s.folder.append_completions(completions)
        s.trackers.table("completions", completions, step=state.learned)
    return row


def diagnose(s: "Session", records: list, sel: "Selection", erm_pairs: Optional[Preferences]) -> dict[str, float]:
    """The E&E online win rate (the dueling responses vs the references), how often the judge
    agrees with the ERM's own labels, and whether the selected duels have larger true margins
    |r*(y) - r*(y')| than random pairs of the same candidates (the informativeness active
    exploration aims for)."""
    judge, state, out = s.judge, s.state, {}
    prompts, refs = [r.prompt for r in records], [r.reference for r in records]
    if None not in refs:
        probs = torch.cat([judge.compare(prompts, sel.duels.first, refs), judge.compare(prompts, sel.duels.second, refs)])
        state.eval_calls += 2 * len(prompts)
        out["online_win_rate"] = win_stats(probs)["win_rate"]
    if erm_pairs is not None and len(erm_pairs):
        probs = judge.compare(erm_pairs.prompts, erm_pairs.chosen, erm_pairs.rejected)
        state.eval_calls += len(erm_pairs)
        answered = ~torch.isnan(probs)  # a judge may leave some unanswered
        if answered.any():
            out["erm_label_accuracy"] = (probs[answered] > 0.5).double().mean().item()
            if erm_pairs.confidence is not None:  # how sure the ensemble was of the same pairs: calibration
                out["erm_label_confidence"] = torch.tensor(erm_pairs.confidence, dtype=torch.float64)[answered].mean().item()
    if s.agent.learn_erm and judge.scores:
        out.update(_margins(s, sel, len(prompts)))
    return out


def _margins(s: "Session", sel: "Selection", p: int) -> dict[str, float]:
    m = sel.candidates.num_candidates
    true = s.judge.score(*sel.candidates.flat()).reshape(p, m)  # (P, M)
    rows = torch.arange(p)
    chosen_gap = (true[rows, sel.choice.first] - true[rows, sel.choice.second]).abs()
    side = torch.Generator().manual_seed(s.cfg.seed * 1_000_003 + s.state.collected)  # leaves the run's RNGs alone
    a, b = torch.randint(m, (2, p), generator=side)
    random_gap = (true[rows, a] - true[rows, b]).abs()
    return {
        "margin_selected": chosen_gap.mean().item(),
        "margin_random": random_gap.mean().item(),
        "selected_margin_larger": (chosen_gap > random_gap).double().mean().item(),
        "first_is_oracle_best": (true[rows, sel.choice.first] == true.max(1).values).double().mean().item(),
    }
