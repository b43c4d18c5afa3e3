"""The online loop, split along the paper's roles (Fig. 4):

    session.py     the parts built from a RunConfig: actor, explorer (+ ERM), oracles, learner
    collect.py     one batch: propose -> select -> label (ledger first) -> B_ERM
    loop.py        train / resume: the steps, weights sync, evaluation and checkpoint schedule
    evaluation.py  win rate vs references and per-batch diagnostics (never learnt from)
    checkpoint.py  save and exact restore;  state.py  counters, clocks, the prompt stream
    summary.py     summary.json
"""

from sealign.loop.loop import resume, train
from sealign.loop.state import TIMERS, LoopState, PromptStream

__all__ = ["train", "resume", "TIMERS", "LoopState", "PromptStream"]
