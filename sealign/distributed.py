"""The Ray backend (paper §5.1, Fig. 4): actors and the oracle as Ray actors, the learner in the driver.

    driver (learner, explorer + ERM, run folder) ──put weights──► object store ──get──► PolicyActor × N
         ▲                                                                               │ candidates
         └──────────── P(a ≻ b) ◄── OracleActor × K (task or reward-model oracle) ◄──────┘ via the driver

The driver keeps everything that decides or records a label: the budget, the ledger, the
explorer and the label noise (drawn from the oracle's probabilities, keyed by label index).
Ray actors only compute: candidates for a shard of prompts under a given seed and weight
version, or oracle probabilities. Both are pure functions of their arguments, so a call whose
actor died is simply issued again once Ray has restarted the actor, and gives the same answer:
nothing is lost, asked twice, or changed by the failure.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any, Callable, Sequence

import ray
import torch
from ray.exceptions import ActorUnavailableError, RayActorError

from sealign.actor import Actor, join, sampling_seed, shard_bounds
from sealign.config import BackendConfig, OracleConfig
from sealign.errors import SealignError
from sealign.oracles.base import Oracle, PairwiseOracle
from sealign.records import Candidates

MAX_REISSUES = 5  # the same call failing this often means the actor dies of its work, not by accident
RESTART_WAIT_S = 300.0  # a restarting actor reloads its model: slow on a loaded machine, but not forever


def connect(cfg: BackendConfig) -> None:
    """Join the cluster at --ray-address (or $RAY_ADDRESS), else start Ray on this machine."""
    if ray.is_initialized():  # a caller (a test, a notebook) started it already
        return
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise SealignError(f"cannot start or join Ray at {address or 'this machine'}: {str(e).splitlines()[0]}") from None


def poolable(cfg: OracleConfig) -> bool:
    """Oracles computed here (the task's reward, a reward model) go to Ray actors; a judge or an
    `http://` oracle is a service already and is called from the driver."""
    return cfg.kind in ("task", "rm")


def _check_resources(what: str, count: int, cpus: float, gpus: float) -> None:
    """Refuse, before any work, actors the cluster can never place (Ray would wait forever)."""
    have = ray.cluster_resources()
    for name, need in (("CPU", count * cpus), ("GPU", count * gpus)):
        if need > have.get(name, 0.0):
            raise SealignError(f"{what} need {need:g} {name}s; the Ray cluster has {have.get(name, 0.0):g}")


class Incarnations:
    """Counts actor restarts: every answer carries the answering process's id, and a new id for
    the same actor means Ray restarted it."""

    def __init__(self, n: int):
        self.pids: list[int | None] = [None] * n
        self.restarts = 0

    def seen(self, k: int, pid: int) -> None:
        if self.pids[k] is not None and self.pids[k] != pid:
            self.restarts += 1
        self.pids[k] = pid


def gather(calls: Sequence[tuple[int, Callable[[], Any]]], refs: list, incarnations: Incarnations) -> list:
    """The results of remote calls (already issued as `refs`), in order. `calls[i]` is (actor
    index, a function issuing call i again): a call whose actor died is re-issued, and Ray
    queues it until the actor is back."""
    out = []
    for (k, issue), ref in zip(calls, refs):
        failures, restart_deadline = 0, None
        while True:
            try:
                pid, result = ray.get(ref)
                break
            except RayActorError as e:
                first_line = str(e).splitlines()[0]
                if isinstance(e, ActorUnavailableError):  # restarting: wait for it, however many tries that takes
                    restart_deadline = restart_deadline or time.monotonic() + RESTART_WAIT_S
                    if time.monotonic() > restart_deadline:
                        raise SealignError(f"Ray actor {k} did not come back within {RESTART_WAIT_S:g} s: {first_line}") from None
                    time.sleep(0.5)
                else:
                    failures += 1
                    if failures > MAX_REISSUES:
                        raise SealignError(f"Ray actor {k} failed {failures} times on the same work: {first_line}") from None
                ref = issue()
        incarnations.seen(k, pid)
        out.append(result)
    return out


def _fetch(held: list) -> Any:
    """The object behind a one-element list holding an object-store reference. Ray passes a
    nested reference as it is, so every call can name an object (the initial policy, the latest
    weights) and the actor fetches it only when it needs it."""
    return ray.get(held[0])


@ray.remote
class PolicyActor:
    """One actor of Fig. 4: a copy of pi_theta that samples its shard of each batch.

    It starts empty and takes the initial policy from the first call, so a restarted actor
    rebuilds itself from what the driver holds, not from arguments Ray would have to keep."""

    def __init__(self, threads: int, device: str):
        torch.set_num_threads(threads)
        self.device = device
        self.actor: Actor | None = None

    def propose(self, start: list, prompts: list[str], seed: int, weights: list, version: int) -> tuple[int, Candidates]:
        """Candidates for `prompts` under `seed`, with the weights of `version`; `start` and
        `weights` are one-element lists of references, fetched only when needed."""
        if self.actor is None:
            self.actor = _fetch(start)
            self.actor.model.to(self.device)
            if self.actor.reference is not None:
                self.actor.reference.to(self.device)
        if version != self.actor.version:
            self.actor.model.load_state_dict(_fetch(weights))
            self.actor.version = version
        return os.getpid(), self.actor.propose(prompts, seed)


class ActorGroup:
    """Ray actors that each take one contiguous shard of a batch: what the policy actors and
    the oracle pool share (issuing per-shard calls, counting restarts, shutting down)."""

    def __init__(self, handles: list):
        self.handles = handles
        self.incarnations = Incarnations(len(handles))

    @property
    def restarts(self) -> int:
        return self.incarnations.restarts

    def shard_calls(self, n: int, issue: Callable[[Any, int, int, int], Any]) -> list[tuple[int, Callable[[], Any]]]:
        """(actor index, a function issuing `issue(handle, k, start, stop)`) per shard of n items."""
        return [(k, functools.partial(issue, self.handles[k], k, a, b)) for k, (a, b) in enumerate(shard_bounds(n, len(self.handles)))]

    def close(self) -> None:
        for handle in self.handles:
            ray.kill(handle)


def _put_weights(model: torch.nn.Module) -> Any:
    """The model's weights in the object store, on the host: one put, fetched by every actor."""
    return ray.put({k: v.cpu() for k, v in model.state_dict().items()})


class RayPending:
    """A batch being sampled on the Ray actors; `result` waits, re-issuing a dead actor's shard."""

    def __init__(self, calls: list[tuple[int, Callable[[], Any]]], incarnations: Incarnations):
        self.calls, self.incarnations = calls, incarnations
        self.refs = [issue() for _, issue in calls]
        self.candidates: Candidates | None = None

    def result(self) -> Candidates:
        if self.candidates is None:
            self.candidates = join(gather(self.calls, self.refs, self.incarnations))
        return self.candidates


class RayActors(ActorGroup):
    """The Ray backend's actors: `--actors` PolicyActors, one shard of every batch each.

    `sync` puts the learner's weights in the object store once; each actor gets them on its
    next call. The driver's own `actor` follows too (APL scores with it; checkpoints save it).
    """

    def __init__(self, actor: Actor, cfg: BackendConfig, run_seed: int):
        _check_resources(f"--actors {cfg.actors} x (--actor-cpus {cfg.actor_cpus:g}, --actor-gpus {cfg.actor_gpus:g})", cfg.actors, cfg.actor_cpus, cfg.actor_gpus)
        self.actor, self.run_seed = actor, run_seed
        device = "cuda" if cfg.actor_gpus > 0 else "cpu"
        # one copy of the initial policy (and pi_ref for XPO) for all actors, kept for their restarts
        self.start = ray.put(actor)
        self.weights = _put_weights(actor.model)
        options = {"num_cpus": cfg.actor_cpus, "num_gpus": cfg.actor_gpus, "max_restarts": -1}
        threads = max(1, int(cfg.actor_cpus))
        super().__init__([PolicyActor.options(**options).remote(threads, device) for _ in range(cfg.actors)])

    def submit(self, prompts: Sequence[str], position: int) -> RayPending:
        weights, version = self.weights, self.actor.version  # a re-issued shard uses the same weights

        def issue(handle: Any, k: int, a: int, b: int) -> Any:
            seed = sampling_seed(self.run_seed, position, k)
            return handle.propose.remote([self.start], list(prompts[a:b]), seed, [weights], version)

        return RayPending(self.shard_calls(len(prompts), issue), self.incarnations)

    def sync(self, learner_model: torch.nn.Module, version: int) -> None:
        self.actor.sync(learner_model, version)
        self.weights = _put_weights(self.actor.model)


@ray.remote
class OracleActor:
    """Scores pairs or responses with its copy of the oracle (taken from the first call)."""

    def __init__(self):
        torch.set_num_threads(1)
        self.oracle: Oracle | None = None

    def run(self, copy: list, method: str, *columns: list[str]) -> tuple[int, torch.Tensor]:
        if self.oracle is None:
            self.oracle = _fetch(copy)
        return os.getpid(), getattr(self.oracle, method)(*columns)


class RayOraclePool(ActorGroup, PairwiseOracle):
    """An oracle whose probabilities come from `--oracle-actors` Ray actors, each scoring a shard.

    Labels are drawn here, in the driver, by `PairwiseOracle` (noise keyed by label index), so
    the pool gives exactly the local oracle's labels."""

    def __init__(self, oracle: Oracle, cfg: BackendConfig):
        PairwiseOracle.__init__(self, oracle.cfg)
        _check_resources(f"--oracle-actors {cfg.oracle_actors} x --oracle-gpus {cfg.oracle_gpus:g}", cfg.oracle_actors, 0.0, cfg.oracle_gpus)
        self.scores = oracle.scores
        self.copy = ray.put(oracle)  # kept for the actors' restarts
        options = {"num_cpus": 0, "num_gpus": cfg.oracle_gpus, "max_restarts": -1}  # an oracle mostly waits for its device
        ActorGroup.__init__(self, [OracleActor.options(**options).remote() for _ in range(cfg.oracle_actors)])

    def _spread(self, method: str, *columns: Sequence[str]) -> torch.Tensor:
        def issue(handle: Any, k: int, a: int, b: int) -> Any:
            return handle.run.remote([self.copy], method, *(list(c[a:b]) for c in columns))

        calls = self.shard_calls(len(columns[0]), issue)
        if not calls:
            return torch.empty(0, dtype=torch.float64)
        return torch.cat(gather(calls, [issue() for _, issue in calls], self.incarnations))

    def _probs(self, prompts: list[str], responses_a: list[str], responses_b: list[str]) -> torch.Tensor:
        return self._spread("compare", prompts, responses_a, responses_b)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        return self._spread("score", prompts, responses)
