"""The online loop: budget, ledger, resume after kill -9, offline never syncs, bad input."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import SMALL_FLAGS, TINY, small_run
from sealign.cli import main
from sealign.config import ERMConfig, TrainConfig
from sealign.learner import Learner, LearnerConfig, optimism_term
from sealign.loop import PromptStream, train
from sealign.policy import build_policy, sequence_logprobs
from sealign.records import Preferences
from sealign.runfolder import read_checkpoint

SMALL = SMALL_FLAGS


def run_cfg(out, **kw) -> TrainConfig:
    base = dict(budget=96, batch_size=32, eval_every=64, checkpoint_every=32, out=str(out))
    return TrainConfig(**{**base, **kw})


def ledger(path) -> list[dict]:
    return [json.loads(line) for line in (path / "queries.jsonl").read_text().splitlines()]


def test_budget_is_never_exceeded(tmp_path, task_cfg):
    cfg = run_cfg(tmp_path / "run", budget=100, batch_size=32)  # 100 is not a multiple of 32
    summary = train(small_run(cfg, task_cfg))
    rows = ledger(tmp_path / "run")
    assert summary["queries"] == 100 and summary["labels_asked_this_session"] == 100
    assert summary["seconds"]["generate"] > 0 and summary["seconds"]["learn"] > 0  # every phase is timed
    assert [r["index"] for r in rows] == list(range(100))
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["queries"] for m in metrics] == [0, 64, 100]
    assert all(m["oracle_train_calls"] <= 100 for m in metrics)
    assert {"config.json", "summary.json", "checkpoints", "tb"} <= {p.name for p in (tmp_path / "run").iterdir()}


def test_offline_agent_never_syncs_the_actor(tmp_path, task_cfg, monkeypatch):
    calls = []
    monkeypatch.setattr("sealign.actor.Actor.sync", lambda self, model, version: calls.append(version))
    train(small_run(run_cfg(tmp_path / "off", agent="offline"), task_cfg))
    assert calls == []
    train(small_run(run_cfg(tmp_path / "on"), task_cfg))
    assert calls == [1, 2, 3]  # positive control: online syncs after every step


def test_learner_step_prefers_chosen(task):
    torch.manual_seed(0)
    tokenizer = task.build_tokenizer()
    model = build_policy(TINY, tokenizer)
    learner = Learner(model, tokenizer, LearnerConfig("dpo", 0.1, 1e-3, "constant", 0, 1))
    record = task.records("holdout")[0]
    batch = Preferences([record.prompt], [task.optimal_summary(record.prompt)], [record.reference])

    def gap() -> float:
        with torch.no_grad():
            logp, _ = sequence_logprobs(model, tokenizer, batch.prompts * 2, batch.chosen + batch.rejected)
        return (logp[0] - logp[1]).item()

    before = gap()
    figures = learner.step(batch)
    assert gap() > before
    assert figures["loss"] == pytest.approx(0.6931, abs=1e-3)  # pi = pi_ref at the first step: -log sigma(0)


def test_soft_labels_move_the_policy_as_their_probability_says(task):
    """The gradient of a sure soft label (p = 1) is the hard label's, p = 0 the reversed pair's,
    and p = 1/2 gives none at pi = pi_ref (DPO's two orders pull equally hard there)."""
    tokenizer = task.build_tokenizer()
    record = task.records("holdout")[0]
    x, good, bad = record.prompt, task.optimal_summary(record.prompt), record.reference

    def gradient(batch: Preferences) -> torch.Tensor:
        torch.manual_seed(0)
        model = build_policy(TINY, tokenizer)
        Learner(model, tokenizer, LearnerConfig("dpo", 0.1, 1e-3, "constant", 0, 1)).step(batch)
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    hard = gradient(Preferences([x], [good], [bad]))
    assert hard.abs().max() > 1e-4
    assert torch.allclose(gradient(Preferences([x], [good], [bad], [1.0])), hard, rtol=1e-4, atol=1e-8)
    assert torch.allclose(gradient(Preferences([x], [bad], [good], [0.0])), hard, rtol=1e-4, atol=1e-8)
    assert gradient(Preferences([x], [good], [bad], [0.5])).abs().max() < 1e-9
    y, short = task.records("holdout")[1].prompt, task.records("holdout")[1].reference  # each p goes with its own pair
    both = gradient(Preferences([x, y], [good, short], [bad, ""]))
    assert torch.allclose(gradient(Preferences([x, y], [good, ""], [bad, short], [1.0, 0.0])), both, rtol=1e-4, atol=1e-8)
    assert not torch.allclose(gradient(Preferences([x, y], [good, ""], [bad, short], [0.0, 1.0])), both, rtol=1e-4, atol=1e-8)


def test_preferences_merge_label_probabilities():
    sure, soft, empty = Preferences(["x"], ["a"], ["b"]), Preferences(["y"], ["c"], ["d"], [0.25]), Preferences([], [], [], [])
    assert (sure + soft).confidence == [1.0, 0.25] and (soft + sure).confidence == [0.25, 1.0]
    assert (soft + soft).confidence == [0.25, 0.25] and (sure + empty).confidence == [1.0]
    assert (sure + Preferences([], [], [])).confidence is None
    with pytest.raises(ValueError, match="2 label probabilities for 1 pairs"):
        Preferences(["x"], ["a"], ["b"], [0.5, 0.5])


def test_identical_pairs_do_not_move_the_policy(task):
    torch.manual_seed(0)
    tokenizer = task.build_tokenizer()
    model = build_policy(TINY, tokenizer)
    learner = Learner(model, tokenizer, LearnerConfig("dpo", 0.1, 1e-2, "constant", 0, 1))
    before = [p.detach().clone() for p in model.parameters()]
    record = task.records("holdout")[0]
    figures = learner.step(Preferences([record.prompt], [record.reference], [record.reference]))
    assert figures["valid_pairs"] == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_prompt_stream_epochs():
    stream = PromptStream(list(range(5)), seed=0)
    first, second = stream.take(5), stream.take(5)
    assert sorted(first) == sorted(second) == list(range(5)) and first != second
    stream.restore({"epoch": 0, "offset": 2})
    assert stream.take(3) == first[2:]


def _cli(*argv: str) -> list[str]:
    return [sys.executable, "-m", "sealign", "train", *SMALL, *argv]


@pytest.mark.parametrize("agent", ["online", "online-rollback", "sea", "sea-contrast"])
def test_kill_and_resume_equals_uninterrupted(tmp_path, agent):
    """A run killed with SIGKILL mid-way and resumed writes the same queries.jsonl as one that never stopped
    (for SEA this covers the ERM's weights, optimizer, label buffer and generators too; "sea-contrast"
    adds the random clash rule, the anchored ERM pairs and the per-token ERM; "online-rollback" a
    rollback guard that returns to the start at its first positive KL, with iterative syncing)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["--budget", "192", "--batch-size", "32", "--checkpoint-every", "64", "--eval-every", "64", "--deterministic", "--quiet"]
    if agent == "online-rollback":  # the actors follow every 4th step, and at once after the return
        args += ["--rollback-kl", "1e-9", "--sync-every", "4"]
    if agent.startswith("sea"):
        args += ["--agent", "sea", "--num-candidates", "4", "--burn-in", "32", "--eval-bon", "2"]
    if agent == "sea-contrast":
        args += ["--explore", "ee_ts", "--clash", "random", "--erm-anchor", "--gamma", "0.5"]
        args += ["--erm-pooling", "tokens", "--erm-layer", "0", "--erm-logprobs"]
    subprocess.run(_cli(*args, "--out", str(tmp_path / "whole")), env=env, check=True, capture_output=True)

    proc = subprocess.Popen(_cli(*args, "--out", str(tmp_path / "cut")), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ledger_path = tmp_path / "cut" / "queries.jsonl"
    deadline = time.time() + 300
    # kill after the first checkpoint (64 queries) but before the end, so some labels lie past it
    while time.time() < deadline and proc.poll() is None:
        if ledger_path.exists() and len(ledger_path.read_text().splitlines()) >= 96:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    asked_before = len(ledger(tmp_path / "cut"))
    assert 96 <= asked_before < 192

    subprocess.run([sys.executable, "-m", "sealign", "train", "--resume", str(tmp_path / "cut"), "--quiet"], env=env, check=True, capture_output=True)
    summary = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert summary["queries"] == 192
    assert summary["labels_asked_this_session"] == 192 - asked_before  # nothing asked twice
    assert summary["replay_mismatches"] == 0
    whole_summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert summary["prompts"] == whole_summary["prompts"]  # counted across sessions
    assert summary["rollbacks"] == whole_summary["rollbacks"] == (1 if agent == "online-rollback" else None)
    assert (tmp_path / "cut" / "queries.jsonl").read_text() == (tmp_path / "whole" / "queries.jsonl").read_text()
    whole = [json.loads(x) for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    cut = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [(m["queries"], m["win_rate"]) for m in cut] == [(m["queries"], m["win_rate"]) for m in whole]


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--loss", "kto"], "unknown loss 'kto'"),
        (["--agent", "ppo"], "unknown agent 'ppo'"),
        (["--budget", "0"], "--budget must be positive"),
        (["--beta", "-1"], "--beta must be > 0"),
        (["--loss", "ipo"], "--beta is required for ipo"),
        (["--num-candidates", "1"], "--num-candidates must be at least 2"),
        (["--budget", "10", "--batch-size", "64"], "exceeds --budget"),
        ([], "exactly one of --out"),
        (["--explore", "greedy"], "unknown --explore 'greedy'"),
        (["--explore", "ee_ts"], "needs a reward model"),
        (["--clash", "random"], "--clash random: rule passive has no clash rule"),
        (["--agent", "sea", "--clash", "first"], "invalid choice: 'first'"),
        (["--eval-bon", "4"], "--eval-bon needs a reward model"),
        (["--agent", "erm-bon", "--eval-bon", "1"], "infers by best-of-N"),
        (["--agent", "sea", "--gamma", "0"], "--gamma must be in (0, 1]"),
        (["--rollback-kl", "0"], "--rollback-kl must be positive"),
        (["--agent", "xpo", "--rollback-kl", "8"], "draws half of them from pi_ref"),
        (["--agent", "erm-bon", "--rollback-kl", "8"], "trains none"),
        (["--rollback-kl-ratio", "1.6"], "needs --rollback-kl"),
        (["--rollback-kl", "8", "--rollback-kl-ratio", "1"], "--rollback-kl-ratio must be above 1"),
        (["--agent", "sea", "--erm-heads", "1"], "--erm-heads must be at least 2"),
        (["--backend", "spark"], "spark"),
        (["--actors", "0"], "--actors must be at least 1"),
        (["--async", "--max-staleness", "0"], "--max-staleness must be at least 1"),
        (["--ray-address", "10.0.0.1:6379"], "--ray-address needs --backend ray"),
        (["--oracle-actors", "2"], "--oracle-actors needs --backend ray"),
    ],
)
def test_bad_train_input(capsys, tmp_path, argv, fragment):
    code = main(["train", *argv, *(["--out", str(tmp_path / "r")] if argv else [])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and fragment in err[0]
    assert not (tmp_path / "r").exists()  # nothing was started


def test_existing_out_without_resume(capsys, tmp_path):
    (tmp_path / "r").mkdir()
    code = main(["train", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "already exists" in err[0]


def test_non_finite_loss_stops_and_keeps_checkpoint(tmp_path, task_cfg, monkeypatch, capsys):
    from sealign import learner as learner_mod

    real = learner_mod.Learner.step

    def step(self, batch, reference_samples=None):
        if self.steps == 2:
            raise learner_mod.NonFiniteLoss("non-finite dpo loss at learner step 3")
        return real(self, batch, reference_samples)

    monkeypatch.setattr(learner_mod.Learner, "step", step)
    code = main(["train", *SMALL, "--budget", "128", "--batch-size", "32", "--checkpoint-every", "32", "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "non-finite" in err[0] and "checkpoint" in err[0]
    state = read_checkpoint(tmp_path / "r" / "checkpoints" / "last")
    assert state["loop"]["learned"] == 64  # the last good state, before the failing step
    assert len(ledger(tmp_path / "r")) == 96  # labels obtained before the failure are kept


def _fake_proposals(identical_every: int):
    """An actor whose every `identical_every`-th prompt drawn gets two identical candidates."""
    from sealign.records import Candidates

    drawn = itertools.count()

    def propose(self, prompts, seed):
        rows = [["apple", "apple"] if next(drawn) % identical_every == 0 else ["apple", "river"] for _ in prompts]
        return Candidates(list(prompts), rows)

    return propose


def test_identical_duels_are_not_asked_nor_charged(tmp_path, task_cfg, monkeypatch):
    monkeypatch.setattr("sealign.actor.Actor.propose", _fake_proposals(2))
    summary = train(small_run(run_cfg(tmp_path / "r", budget=64), task_cfg))
    rows = ledger(tmp_path / "r")
    assert len(rows) == 64 and summary["queries"] == 64
    assert all(r["first"] != r["second"] for r in rows)
    # a short batch is topped up with only the prompts still missing: every prompt drawn was
    # asked or skipped as identical, none left over
    assert summary["prompts"] == summary["queries"] + summary["identical_skipped"]
    assert summary["identical_skipped"] in (63, 64)  # every other prompt drawn


def test_only_identical_duels_stop_with_a_message(tmp_path, task_cfg, monkeypatch, capsys):
    monkeypatch.setattr("sealign.actor.Actor.propose", _fake_proposals(1))
    code = main(["train", *SMALL, "--budget", "64", "--batch-size", "32", "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "identical pairs" in err[0]


@pytest.mark.parametrize("flags", [["--budget", "10000"], ["--actors", "2"], ["--async"]])
def test_resume_refuses_flags_it_would_ignore(capsys, tmp_path, flags):
    (tmp_path / "r").mkdir()
    code = main(["train", "--resume", str(tmp_path / "r"), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and flags[0] in err[0]


def test_ray_backend_without_ray_says_how_to_install_it(capsys, tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find_spec(name, *a))
    code = main(["train", "--backend", "ray", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pip install 'sealign[ray]'" in err[0]
    assert not (tmp_path / "r").exists()


def test_trained_policy_is_saved_and_loadable(tmp_path, task_cfg):
    train(small_run(run_cfg(tmp_path / "r", budget=32), task_cfg))
    code = main(["eval", "--n-train", "300", "--n-holdout", "40", "--policy", str(tmp_path / "r" / "policy")])
    assert code == 0


def _tiny_sea(out, **kw) -> TrainConfig:
    base = dict(agent="sea", num_candidates=4, burn_in=0, gamma=0.5, eval_bon=2)
    return run_cfg(out, **{**base, **kw})


ERM_TINY = ERMConfig(erm_heads=4, erm_hidden=16)


@pytest.mark.parametrize("soft", [False, True])
def test_erm_labelled_pairs_never_reach_the_oracle_nor_the_budget(tmp_path, task_cfg, monkeypatch, soft):
    from sealign import learner as learner_mod
    from sealign.oracles import RewardOracle

    batches, asked = [], []
    real_step, real_label = learner_mod.Learner.step, RewardOracle.label

    def step(self, batch, reference_samples=None):
        batches.append(batch)
        return real_step(self, batch, reference_samples)

    def label(self, prompts, a, b):
        asked.extend(zip(prompts, a, b))
        return real_label(self, prompts, a, b)

    monkeypatch.setattr(learner_mod.Learner, "step", step)
    monkeypatch.setattr(RewardOracle, "label", label)
    erm = dataclasses.replace(ERM_TINY, erm_soft_labels=soft)
    summary = train(small_run(_tiny_sea(tmp_path / "r", budget=64, batch_size=16), task_cfg, erm=erm))
    rows = ledger(tmp_path / "r")
    assert summary["queries"] == len(rows) == len(asked) == 64  # every oracle label is one query
    assert [(r["prompt"], r["first"], r["second"]) for r in rows] == asked
    assert len(batches) == 8 and all(len(b) == 16 for b in batches)  # 8 oracle + 8 ERM pairs per step
    from_oracle = {(r["prompt"], r["first"], r["second"]) for r in rows} | {(r["prompt"], r["second"], r["first"]) for r in rows}
    mixed = [(p, c, r) for b in batches for p, c, r in zip(b.prompts, b.chosen, b.rejected) if (p, c, r) not in from_oracle]
    assert len(mixed) == 64  # the other half of every batch was labelled by the ERM
    if soft:  # the oracle's labels are sure; the ERM's carry the ensemble's probability
        sure = [c for b in batches for p, ch, r, c in zip(b.prompts, b.chosen, b.rejected, b.confidence) if (p, ch, r) in from_oracle]
        unsure = [c for b in batches for p, ch, r, c in zip(b.prompts, b.chosen, b.rejected, b.confidence) if (p, ch, r) not in from_oracle]
        assert sure == [1.0] * 64 and len(unsure) == 64 and all(0.0 < c < 1.0 for c in unsure)
    else:
        assert all(b.confidence is None for b in batches)
    state = read_checkpoint(tmp_path / "r" / "checkpoints" / "last")
    assert len(state["explorer"]["erm"]["chosen"]) == 64  # the ERM trains on the oracle's labels only
    metrics = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["erm_fraction"] == pytest.approx(0.5)
    assert {"erm_accuracy", "disagreement_selected", "clash_rate", "erm_loss"} <= set(metrics[-1])
    assert ("erm_label_confidence" in metrics[-1]) == soft


def test_xpo_optimism_term_value_and_gradient_sign(task):
    """alpha * mean log pi(y~): its value is the policy's log-prob of pi_ref's response, and a step
    on it alone (a tied DPO pair contributes nothing) lowers that log-prob."""
    torch.manual_seed(0)
    tokenizer = task.build_tokenizer()
    model = build_policy(TINY, tokenizer)
    record = task.records("holdout")[0]
    y_ref = task.optimal_summary(record.prompt)
    with torch.no_grad():
        before, _ = sequence_logprobs(model, tokenizer, [record.prompt], [y_ref])
    assert optimism_term(model, tokenizer, [record.prompt], [y_ref]).item() == pytest.approx(before.item(), rel=1e-5)
    learner = Learner(model, tokenizer, LearnerConfig("dpo", 0.1, 1e-2, "constant", 0, 1, optimism=1.0))
    tied = Preferences([record.prompt], [record.reference], [record.reference])  # masked: no DPO gradient
    figures = learner.step(tied, ([record.prompt], [y_ref]))
    assert figures["optimism_logp"] == pytest.approx(before.item(), rel=1e-5)
    with torch.no_grad():
        after, _ = sequence_logprobs(model, tokenizer, [record.prompt], [y_ref])
    assert after.item() < before.item()


@pytest.mark.parametrize("agent", ["apl", "xpo"])
def test_dpo_only_agents_refuse_other_losses(capsys, tmp_path, agent):
    code = main(["train", "--agent", agent, "--loss", "slic", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"agent {agent} is built on DPO" in err[0]
    assert not (tmp_path / "r").exists()


def test_apl_asks_only_the_most_uncertain_prompts_of_its_pool(tmp_path, task_cfg, monkeypatch):
    """APL draws pool_factor x batch prompts and asks, in order, about the highest-entropy ones."""
    from sealign.explorer import Explorer

    selections = []
    real = Explorer.select

    def spy(self, candidates):
        sel = real(self, candidates)
        selections.append(sel)
        return sel

    monkeypatch.setattr(Explorer, "select", spy)
    cfg = run_cfg(tmp_path / "r", agent="apl", budget=32, batch_size=16, eval_every=32)
    train(small_run(cfg, task_cfg))
    asked = [r["prompt"] for r in ledger(tmp_path / "r")]
    expected = []
    for sel in selections:
        assert len(sel.candidates.prompts) == 64  # 4 x 16 prompts per draw
        distinct = [i for i in sel.rows if sel.duels.first[i] != sel.duels.second[i]]
        need = 16 - len(expected) % 16  # a pool short of distinct duels is topped up by the next
        expected += [sel.candidates.prompts[i] for i in distinct[:need]]
    assert asked == expected[:32]
