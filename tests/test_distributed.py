"""The Ray backend on a local two-CPU Ray cluster: sharded actors give the local backend's labels
(synchronous and asynchronous), a killed actor loses nothing, and a Ray run resumes exactly."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from conftest import TINY, small_run
from sealign.actor import Actor, LocalActors, join, sampling_seed, shard_bounds
from sealign.config import BackendConfig, TrainConfig
from sealign.loop import train

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'sealign[ray]'")

BUDGET, BATCH = 48, 16  # three learner steps


def run(out: Path, task_cfg, resume: bool = False, **backend) -> dict:
    cfg = TrainConfig(budget=BUDGET, batch_size=BATCH, eval_every=BUDGET, checkpoint_every=BATCH, **({"resume": str(out)} if resume else {"out": str(out)}))
    return train(small_run(cfg, task_cfg, backend=BackendConfig(**backend)))


def ledger(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "queries.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local_ledgers(tmp_path_factory, task_cfg) -> dict[str, list[dict]]:
    """The local backend's labels with two (logical) actors, synchronous and asynchronous."""
    root = tmp_path_factory.mktemp("local")
    run(root / "sync", task_cfg, actors=2)
    run(root / "async", task_cfg, actors=2, async_collect=True)
    return {mode: ledger(root / mode) for mode in ("sync", "async")}


def test_shards_cover_the_batch_and_their_seeds_do_not_depend_on_the_backend(task):
    assert shard_bounds(10, 3) == [(0, 3), (3, 7), (7, 10)]
    assert shard_bounds(2, 4) == [(0, 1), (1, 2)]  # an actor with nothing to do gets no shard
    assert sampling_seed(0, 32, 1) == sampling_seed(0, 32, 1) != sampling_seed(0, 32, 0)
    from sealign.policy import build_policy

    tokenizer = task.build_tokenizer()
    actor = Actor(build_policy(TINY, tokenizer), tokenizer, num_candidates=2, temperature=1.0, max_new_tokens=4)
    prompts = [r.prompt for r in task.records("train")[:5]]
    by_hand = join([actor.propose(prompts[a:b], sampling_seed(7, 96, k)) for k, (a, b) in enumerate(shard_bounds(5, 2))])
    assert LocalActors(actor, 2, run_seed=7).submit(prompts, 96).result() == by_hand


def test_two_ray_actors_label_exactly_the_budget_as_the_local_backend_does(cluster, local_ledgers, tmp_path, task_cfg):
    summary = run(tmp_path / "r", task_cfg, backend="ray", actors=2, oracle_actors=2)
    rows = ledger(tmp_path / "r")
    assert summary["queries"] == BUDGET and summary["labels_asked_this_session"] == BUDGET
    assert [r["index"] for r in rows] == list(range(BUDGET))
    assert [r["version"] for r in rows] == [r["step"] for r in rows]  # synchronous: the latest weights
    assert rows == local_ledgers["sync"]
    assert summary["restarts"] == 0 and summary["backend"] == "ray"


def test_async_actors_sample_one_version_behind_and_match_the_local_schedule(cluster, local_ledgers, tmp_path, task_cfg):
    run(tmp_path / "a", task_cfg, backend="ray", actors=2, async_collect=True, oracle_actors=0)
    rows = ledger(tmp_path / "a")
    assert [r["version"] for r in rows] == [max(0, r["step"] - 1) for r in rows]  # staleness bounded by one
    assert rows == local_ledgers["async"]
    assert rows != local_ledgers["sync"]
    metrics = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert 0 < metrics[-1]["staleness"] <= 1


def test_actors_the_cluster_cannot_place_are_refused_before_any_work(cluster, tmp_path, task_cfg):
    from sealign.errors import SealignError

    with pytest.raises(SealignError, match="need 3 CPUs; the Ray cluster has 2"):
        run(tmp_path / "r", task_cfg, backend="ray", actors=3)
    assert not (tmp_path / "r").exists()


def _policy_actor_pids() -> list[int]:
    """Processes of live PolicyActors (Ray titles them `ray::PolicyActor...`)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(b"ray::PolicyActor"):
                pids.append(int(entry.name))
        except OSError:
            pass
    return pids


def test_a_killed_actor_is_restarted_and_nothing_is_lost_or_asked_twice(cluster, local_ledgers, tmp_path, task_cfg):
    out = tmp_path / "k"
    killed = []

    def kill_one_actor_mid_run():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            queries = out / "queries.jsonl"
            pids = _policy_actor_pids()
            if queries.is_file() and len(queries.read_text().splitlines()) >= BATCH and pids:
                os.kill(pids[0], signal.SIGKILL)  # after the first step: two more are to come
                killed.append(pids[0])
            time.sleep(0.02)

    killer = threading.Thread(target=kill_one_actor_mid_run)
    killer.start()
    summary = run(out, task_cfg, backend="ray", actors=2, oracle_actors=0)
    killer.join()
    assert killed, "the test never found an actor to kill"
    assert summary["restarts"] >= 1
    assert ledger(out) == local_ledgers["sync"]  # the re-issued shard gave the same candidates
    assert summary["labels_asked_this_session"] == BUDGET


def test_a_ray_run_resumes_from_its_checkpoint_with_the_prefetched_batch(cluster, local_ledgers, tmp_path, task_cfg, monkeypatch):
    from sealign.learner import Learner

    step, steps = Learner.step, []

    def fail_on_third_step(self, *args, **kwargs):
        steps.append(1)
        if len(steps) == 3:
            raise KeyboardInterrupt  # the driver stops after the checkpoint at 32 queries
        return step(self, *args, **kwargs)

    monkeypatch.setattr(Learner, "step", fail_on_third_step)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "r", task_cfg, backend="ray", actors=2, async_collect=True, oracle_actors=0)
    monkeypatch.setattr(Learner, "step", step)
    assert len(ledger(tmp_path / "r")) == BUDGET  # the last batch was labelled before the stop
    summary = run(tmp_path / "r", task_cfg, resume=True, backend="ray", oracle_actors=0)
    assert summary["labels_asked_this_session"] == 0 and summary["replay_mismatches"] == 0
    assert ledger(tmp_path / "r") == local_ledgers["async"]


def test_a_restarting_actor_is_waited_for_and_one_that_keeps_dying_is_given_up(monkeypatch):
    """A restart (the actor reloading its model) may take many tries on a loaded machine: it is
    waited for, not counted; the same call killing its actor again and again stops the run."""
    from ray.exceptions import ActorUnavailableError, RayActorError

    from sealign import distributed

    monkeypatch.setattr(distributed.time, "sleep", lambda s: None)
    outcomes = iter([ActorUnavailableError("restarting", None)] * 3 * distributed.MAX_REISSUES + [(7, "done")])

    def get(ref):
        got = next(outcomes)
        if isinstance(got, Exception):
            raise got
        return got

    monkeypatch.setattr(distributed.ray, "get", get)
    issued = []
    incarnations = distributed.Incarnations(1)
    assert distributed.gather([(0, lambda: issued.append(1))], [None], incarnations) == ["done"]
    assert len(issued) == 3 * distributed.MAX_REISSUES  # re-issued after every failed wait
    monkeypatch.setattr(distributed.ray, "get", lambda ref: (_ for _ in ()).throw(RayActorError()))
    with pytest.raises(distributed.SealignError, match=f"Ray actor 0 failed {distributed.MAX_REISSUES + 1} times on the same work"):
        distributed.gather([(0, lambda: None)], [None], incarnations)
    clock = iter([0.0, distributed.RESTART_WAIT_S + 1])
    monkeypatch.setattr(distributed.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(distributed.ray, "get", lambda ref: (_ for _ in ()).throw(ActorUnavailableError("restarting", None)))
    with pytest.raises(distributed.SealignError, match="did not come back within 300 s"):
        distributed.gather([(0, lambda: None)], [None], incarnations)
