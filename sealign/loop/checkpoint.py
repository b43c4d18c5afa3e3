"""Checkpoint and exact resume: everything that decides the next label is saved together, and a
resumed session starts from it while the ledger replays the labels asked after it.

A checkpoint holds only what the run's sources cannot rebuild: a LoRA policy's adapters (its
frozen base is pi_ref, loaded again on resume), and the actor's weights only while they lag the
learner's. `sealign.runfolder` stores it as safetensors and JSON.
"""

from __future__ import annotations

import dataclasses

import torch
from transformers import PreTrainedModel

from sealign.actor import Ready
from sealign.data import PromptRecord
from sealign.errors import SealignError
from sealign.loop.session import Session
from sealign.loop.state import LoopState
from sealign.records import Candidates


def trainable_weights(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """The weights a checkpoint keeps: a LoRA (peft) model's adapters, any other model's all."""
    if hasattr(model, "peft_config"):
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(model)
    return model.state_dict()


def load_weights(model: PreTrainedModel, weights: dict[str, torch.Tensor]) -> None:
    """Put back what `trainable_weights` took; peft loads leniently, so the adapters' names are checked here."""
    if not hasattr(model, "peft_config"):
        model.load_state_dict(weights)
        return
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    if weights.keys() != get_peft_model_state_dict(model).keys():
        raise SealignError("the checkpoint's LoRA adapters do not match this run's policy (--lora-r or the model changed)")
    set_peft_model_state_dict(model, weights)


def save_checkpoint(s: Session) -> None:
    """Everything that decides the next label, less what the run's sources rebuild (see above)."""
    s.state.restarts = s.restarts()
    learner = {**s.learner.state_dict(), "model": trainable_weights(s.learner.model)}
    actor = {"version": s.actor.version}
    if s.actor.version != s.learner.steps:  # synced at the learner's last step, the actor is the learner
        actor["model"] = trainable_weights(s.actor.model)
    s.folder.save_checkpoint(
        {
            "learner": learner,
            "actor": actor,
            "stream": s.stream.state(),
            "prefetched": [
                {"records": [dataclasses.asdict(r) for r in records], "candidates": dataclasses.asdict(pending.result())}
                for records, pending in s.queue
            ],
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
        learner, actor = checkpoint["learner"], checkpoint["actor"]
        load_weights(s.learner.model, learner["model"])
        # the weights are in: the learner restores its optimizer, schedule and step count around them
        s.learner.load_state_dict({**learner, "model": s.learner.model.state_dict()})
        if "model" in actor:
            load_weights(s.actor.model, actor["model"])
            s.actor.version = actor["version"]
        else:
            s.actor.sync(s.learner.model, actor["version"])
        s.stream.restore(checkpoint["stream"])
        s.explorer.load_state_dict(checkpoint["explorer"])
        s.oracle.labelled = checkpoint["oracle_labelled"]
        s.state = LoopState(**checkpoint["loop"])
        s.queue.extend(
            ([PromptRecord(**r) for r in batch["records"]], Ready(Candidates(**batch["candidates"]))) for batch in checkpoint["prefetched"]
        )
        s.actors.sync(s.actor.model, s.actor.version)  # remote actors start from pi_ref's weights
    s.restarts_before = s.state.restarts
    s.folder.keep_metrics_until(s.state.learned if checkpoint is not None else -1)
