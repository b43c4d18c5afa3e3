"""Checkpoints are folders of safetensors and JSON: exact round trips, no pickle, LoRA adapters only,
the actor saved only while it lags, and a damaged checkpoint is one error line."""

from __future__ import annotations

import dataclasses
import json
import pickle
from collections import deque
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel

from sealign.actor import Actor, LocalActors, Ready
from sealign.config import ERMConfig
from sealign.erm import EpistemicRewardModel
from sealign.errors import SealignError
from sealign.explorer import Explorer
from sealign.learner import Learner, LearnerConfig
from sealign.loop.checkpoint import load_weights, restore, save_checkpoint, trainable_weights
from sealign.loop.state import LoopState, PromptStream
from sealign.policy import build_policy
from sealign.records import Candidates, Preferences
from sealign.runfolder import RunFolder, join_tensors, read_checkpoint, split_tensors, write_checkpoint
from conftest import TINY


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def assert_same(a, b, where: str = "") -> None:
    """Equal trees: the same container types, tensors of the same dtype and shape and bits."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b)), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}.{i}")
    else:
        assert a == b, where


def test_tensors_and_plain_data_round_trip_exactly(tmp_path):
    shared = torch.randn(3, 4)
    tree = {
        "weights": {"embed": shared, "head": shared, "half": torch.randn(2, 2).to(torch.bfloat16)},  # tied: stored once
        "adam": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(5)}}, "param_groups": [{"betas": (0.9, 0.999), "params": [0]}]},
        "rng": torch.Generator().manual_seed(7).get_state(),
        "empty": [torch.empty(0, 4), torch.empty(0, 4)],
        "plain": {"lr": 1e-3 / 3, "none": None, "flag": True, "text": "ünï", "counts": [1, 2]},
        "looks_tagged": {"__tensor__": "not a tensor"},
    }
    write_checkpoint(tmp_path / "c", tree)
    back = read_checkpoint(tmp_path / "c")
    assert_same(tree, back)
    assert len(load_file(tmp_path / "c" / "tensors.safetensors")) == 7  # the tied tensor once
    assert set(load_file(tmp_path / "c" / "tensors.safetensors")) >= {"adam.state.0.exp_avg", "rng"}
    skeleton, tensors = split_tensors(tree)
    json.dumps(skeleton)  # everything else is plain JSON
    assert_same(join_tensors(skeleton, tensors), tree)


def _tiny_learner(task, seed: int, lora: bool = False) -> Learner:
    tokenizer = task.build_tokenizer()
    torch.manual_seed(0)  # pi_ref, rebuilt the same by every session
    model = build_policy(TINY, tokenizer)
    torch.manual_seed(seed)  # what a resume must overwrite: the weights (or adapters) it trains
    if lora:
        from sealign.models import add_lora

        model = add_lora(model, 4, 8.0)  # adapters of its own, each a no-op at first
    learner = Learner(model, tokenizer, LearnerConfig("dpo", 0.1, 1e-2, "linear", 1, 10))
    if not lora:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
    return learner


def _batch(task) -> Preferences:
    records = task.records("train")[:2]
    return Preferences([r.prompt for r in records], [r.reference for r in records], ["apple river"] * 2)


def _session(tmp_path, task, *, seed: int, lora: bool = False, resume: bool = False) -> SimpleNamespace:
    """The parts of a session the checkpoint touches, small enough to build in a blink."""
    learner = _tiny_learner(task, seed, lora)
    actor = Actor(learner.model, learner.tokenizer, num_candidates=2, temperature=1.0, max_new_tokens=4)
    explorer = Explorer("passive", seed)
    explorer.erm = EpistemicRewardModel(6, ERMConfig(erm_heads=2, erm_hidden=4, erm_batch_size=4, erm_sgd_steps=2), seed)
    folder = RunFolder(tmp_path / "run", resume=resume)
    if not resume:
        folder.create({})
    return SimpleNamespace(
        learner=learner, actor=actor, actors=LocalActors(actor, 1, 0), explorer=explorer, folder=folder,
        stream=PromptStream(task.records("train")[:10], seed=0), queue=deque(), oracle=SimpleNamespace(labelled=0),
        state=LoopState(), restarts=lambda: 0, restarts_before=0,
    )  # fmt: skip


def _advance(s: SimpleNamespace, task, *, sync: bool) -> None:
    """A step of a run: the learner and ERM train, the stream and generators move, a batch waits."""
    s.learner.step(_batch(task))
    if sync:
        s.actor.sync(s.learner.model, s.learner.steps)
    s.explorer.erm.add(torch.randn(5, 6), torch.randn(5, 6))
    s.explorer.erm.train_round()
    torch.rand(3, generator=s.explorer.generator)
    records = s.stream.take(3)
    s.queue.append((records[:2], Ready(Candidates([r.prompt for r in records[:2]], [["a", "b"], ["c", "d"]], version=1))))
    s.oracle.labelled = 4
    s.state = LoopState(collected=4, learned=4, step=1, since_eval={"loss": [0.25, 1]}, wall=1 / 3)


def _check_restored(a: SimpleNamespace, b: SimpleNamespace) -> None:
    assert_same(a.learner.model.state_dict(), b.learner.model.state_dict(), "learner")
    assert_same(a.learner.optimizer.state_dict(), b.learner.optimizer.state_dict(), "optimizer")
    assert_same(a.learner.scheduler.state_dict(), b.learner.scheduler.state_dict(), "scheduler")
    assert_same(a.actor.model.state_dict(), b.actor.model.state_dict(), "actor")
    assert (a.learner.steps, a.actor.version, a.oracle.labelled, a.state) == (b.learner.steps, b.actor.version, b.oracle.labelled, b.state)
    assert_same(a.explorer.state_dict(), b.explorer.state_dict(), "explorer")
    assert [(r, p.result()) for r, p in a.queue] == [(r, p.result()) for r, p in b.queue]
    assert a.stream.take(4) == b.stream.take(4)


def _refuse_unpickling(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint was unpickled")

    for module, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")]:
        monkeypatch.setattr(module, name, refuse)


@pytest.mark.parametrize("sync", [True, False])
def test_a_session_resumes_exactly_never_unpickling_and_keeps_the_actor_only_while_it_lags(tmp_path, task, monkeypatch, sync):
    a = _session(tmp_path, task, seed=0)
    _advance(a, task, sync=sync)
    save_checkpoint(a)
    a.folder.close()
    saved = load_file(tmp_path / "run" / "checkpoints" / "last" / "tensors.safetensors")
    assert any(k.startswith("actor.model.") for k in saved) == (not sync)  # a synced actor is the learner
    for path in (tmp_path / "run" / "checkpoints").rglob("*"):
        if path.is_file():
            head = path.read_bytes()[:2]
            assert head[:1] != b"\x80" and head != b"PK", f"{path} looks like a pickle or a torch.save zip"
    _refuse_unpickling(monkeypatch)
    b = _session(tmp_path, task, seed=1, resume=True)
    restore(b)
    _check_restored(a, b)


def test_a_lora_checkpoint_holds_the_adapters_and_their_moments_only(tmp_path, task, monkeypatch):
    a = _session(tmp_path, task, seed=0, lora=True)
    _advance(a, task, sync=True)
    save_checkpoint(a)
    a.folder.close()
    keys = load_file(tmp_path / "run" / "checkpoints" / "last" / "tensors.safetensors")
    weights = [k for k in keys if k.startswith("learner.model.")]
    assert weights and all(".lora_A." in k or ".lora_B." in k for k in weights)  # no base weight
    moments = {k for k in keys if k.startswith("learner.optimizer.")}
    assert len(moments) == 3 * len(weights)  # step, exp_avg, exp_avg_sq of each adapter
    assert all(k.startswith(("learner.", "explorer.")) for k in keys)  # no second copy for the actor
    _refuse_unpickling(monkeypatch)
    b = _session(tmp_path, task, seed=1, lora=True, resume=True)
    restore(b)
    _check_restored(a, b)
    assert a.learner.step(_batch(task)) == b.learner.step(_batch(task))  # and the next step is the same
    assert_same(a.learner.model.state_dict(), b.learner.model.state_dict(), "learner after a step")


@pytest.mark.parametrize(
    "damage",
    [
        lambda c: (c / "tensors.safetensors").write_bytes((c / "tensors.safetensors").read_bytes()[:1000]),  # torn
        lambda c: (c / "state.json").write_text('{"learner": '),
        lambda c: (c / "state.json").unlink(),
        lambda c: (c / "state.json").write_text(json.dumps({"x": {"__tensor__": "gone"}})),
    ],
)
def test_a_damaged_checkpoint_is_one_error_line_and_the_ledger_stays(tmp_path, damage):
    folder = RunFolder(tmp_path / "run", resume=False)
    folder.create({})
    folder.queries.append([{"prompt": "p", "first": "a", "second": "b", "first_wins": True}])
    folder.save_checkpoint({"w": torch.randn(64, 64), "n": 1})
    ledger = (tmp_path / "run" / "queries.jsonl").read_bytes()
    damage(tmp_path / "run" / "checkpoints" / "last")
    with pytest.raises(SealignError) as e:
        folder.load_checkpoint()
    assert len(str(e.value).splitlines()) == 1 and "damaged" in str(e.value)
    assert (tmp_path / "run" / "queries.jsonl").read_bytes() == ledger


def test_a_kill_between_the_renames_resumes_from_the_previous_checkpoint(tmp_path):
    folder = RunFolder(tmp_path / "run", resume=False)
    folder.create({})
    root = tmp_path / "run" / "checkpoints"
    folder.save_checkpoint({"n": 1, "w": torch.zeros(2)})
    (root / "last").rename(root / "last.old")  # killed after the first rename
    (root / "last.tmp").mkdir()  # and a write torn before it
    assert folder.load_checkpoint()["n"] == 1
    folder.save_checkpoint({"n": 2, "w": torch.ones(2)})
    assert folder.load_checkpoint()["n"] == 2 and sorted(p.name for p in root.iterdir()) == ["last"]


def test_a_pickled_checkpoint_of_an_earlier_version_is_refused_in_one_line(tmp_path):
    folder = RunFolder(tmp_path / "run", resume=False)
    folder.create({})
    (tmp_path / "run" / "checkpoints" / "state.pt").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(SealignError, match="pickled checkpoint") as e:
        folder.load_checkpoint()
    assert len(str(e.value).splitlines()) == 1


def test_loop_state_is_plain_json():
    state = dataclasses.asdict(LoopState(since_eval={"loss": [0.1, 2]}, wall=0.1 + 0.2))
    assert LoopState(**json.loads(json.dumps(state))) == LoopState(**state)


def test_adapters_of_another_lora_setting_are_refused_in_one_line(task):
    from sealign.models import add_lora

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(task.build_tokenizer()), n_positions=32, n_embd=16, n_layer=1, n_head=2)
    model = add_lora(GPT2LMHeadModel(config), 2, 4.0)
    theirs = add_lora(GPT2LMHeadModel(GPT2Config(**{**config.to_dict(), "n_layer": 2})), 2, 4.0)  # one layer more
    with pytest.raises(SealignError, match="do not match this run's policy") as e:
        load_weights(model, trainable_weights(theirs))
    assert "\n" not in str(e.value)
