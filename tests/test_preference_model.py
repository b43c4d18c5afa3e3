"""The built-in task's pretrained preference model and confidence-gated self-labelling."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification

from conftest import QUICK_PM, SMALL_FLAGS, small_run
from sealign.cli import main
from sealign.config import ERMConfig, OracleConfig, TrainConfig
from sealign.erm import Backbone
from sealign.explore import gated_erm_pairs, head_agreement
from sealign.loop import train
from sealign.preference_model import ensure_preference_model, preference_model_dir
from sealign.runfolder import read_checkpoint
from sealign.sft import weights_fingerprint
from sealign.tasks.keywords import KeywordsTask


def test_public_salience_has_the_documented_correlation(task):
    """s_pub = 1/2 + rho (s - 1/2) + sqrt(1 - rho^2) (u - 1/2) with u independent of s: over 396 words the
    sample correlation lies near rho = 1/sqrt(2) (its standard error is about (1 - rho^2)/sqrt(n) = 0.025)."""
    s = torch.tensor([task.salience[w] for w in task.words])
    pub = torch.tensor([task.public_salience[w] for w in task.words])
    assert torch.corrcoef(torch.stack([s, pub]))[0, 1].item() == pytest.approx(2**-0.5, abs=0.08)
    assert pub.mean().item() == pytest.approx(0.5, abs=0.05)
    post = task.records("train")[0].prompt
    assert task.public_reward([post], [""]) == task.reward([post], [""]) == [-2.0]  # the universal rules are the oracle's


def test_built_deterministically_from_its_seed_without_any_oracle_label(tmp_path, monkeypatch, task_cfg):
    def no_oracle(*args, **kwargs):
        raise AssertionError("the preference model must never see the oracle's reward")

    monkeypatch.setattr(KeywordsTask, "reward", no_oracle)
    fingerprints = []
    for home in ("a", "b"):
        monkeypatch.setenv("SEALIGN_HOME", str(tmp_path / home))
        built = ensure_preference_model(task_cfg, QUICK_PM, progress=False)
        assert not built.reused and built.path == preference_model_dir(task_cfg, QUICK_PM)
        fingerprints.append(weights_fingerprint(built.path))
    assert fingerprints[0] == fingerprints[1]
    assert ensure_preference_model(task_cfg, QUICK_PM, progress=False).reused  # cached by its settings
    other = ensure_preference_model(task_cfg, type(QUICK_PM)(pm_steps=20, pm_batch_size=16, pm_seed=1), progress=False)
    assert weights_fingerprint(other.path) != fingerprints[0]


def test_loads_by_path_through_transformers(task_cfg, task):
    path = ensure_preference_model(task_cfg, QUICK_PM, progress=False).path
    rm = AutoModelForSequenceClassification.from_pretrained(path)
    assert rm.config.num_labels == 1
    assert AutoModel.from_pretrained(path).config.hidden_size == Backbone(path).width
    from sealign.oracles import make_oracle

    oracle = make_oracle(OracleConfig(oracle=f"rm:{path}"))  # the prior as an oracle of its own
    record = task.records("holdout")[0]
    assert oracle.compare([record.prompt], [record.reference], [""]).shape == (1,)


def test_gate_never_keeps_a_pair_the_heads_disagree_on():
    generator = torch.Generator().manual_seed(0)
    for trial in range(50):
        k, p, m = 2 + trial % 7, 1 + trial % 5, 2 + trial % 6
        rewards = torch.randn(k, p, m, generator=generator).round(decimals=1)  # ties happen
        mask = torch.rand(p, m, generator=generator) > 0.2
        for share in (0.6, 0.8, 1.0):
            prompt, chosen, rejected = gated_erm_pairs(rewards, share, mask)
            agree = (rewards[:, prompt, chosen] > rewards[:, prompt, rejected]).double().mean(0)
            assert bool((agree >= share).all())
            assert bool(mask[prompt, chosen].all() and mask[prompt, rejected].all()) and bool((chosen != rejected).all())
            best = rewards.mean(0).masked_fill(~mask, float("-inf")).argmax(1)
            assert bool((chosen == best[prompt]).all())  # the ensemble-mean best is the chosen response
            assert len(set(zip(prompt.tolist(), rejected.tolist()))) == len(prompt)  # no pair twice


def test_gate_orders_pairs_by_round():
    """Two prompts, three candidates, one head (share 1): prompt 0 ranks 2 > 1 > 0, prompt 1 ranks 0 > 2 > 1.
    Round 1 pairs each prompt's best with its worst, round 2 with the runner-up."""
    rewards = torch.tensor([[[0.0, 1.0, 2.0], [5.0, 3.0, 4.0]]])
    prompt, chosen, rejected = gated_erm_pairs(rewards, 1.0)
    assert prompt.tolist() == [0, 1, 0, 1] and chosen.tolist() == [2, 0, 2, 0] and rejected.tolist() == [0, 1, 1, 2]
    assert head_agreement(rewards, torch.tensor([2, 0])).tolist() == [[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]


def watch_learner_and_oracle(monkeypatch) -> tuple[list, list]:
    """Lists that fill, as a run goes, with every policy batch the learner steps on and every
    (prompt, first, second) the oracle is asked about."""
    from sealign import learner as learner_mod
    from sealign.oracles import RewardOracle

    batches, asked = [], []
    real_step, real_label = learner_mod.Learner.step, RewardOracle.label
    monkeypatch.setattr(learner_mod.Learner, "step", lambda self, b, r=None: (batches.append(b), real_step(self, b, r))[1])
    monkeypatch.setattr(RewardOracle, "label", lambda self, x, a, b: (asked.extend(zip(x, a, b)), real_label(self, x, a, b))[1])
    return batches, asked


def test_gated_erm_pairs_never_reach_the_oracle_the_budget_nor_the_ledger(tmp_path, task_cfg, monkeypatch):
    batches, asked = watch_learner_and_oracle(monkeypatch)
    cfg = TrainConfig(agent="sea", num_candidates=6, burn_in=0, gamma=0.25, batch_size=32, budget=64, eval_every=64, out=str(tmp_path / "r"))
    erm = ERMConfig(erm_heads=4, erm_hidden=16, erm_gate=1.0, erm_backbone="pm", erm_soft_labels=True)
    summary = train(small_run(cfg, task_cfg, erm=erm))
    rows = [json.loads(x) for x in (tmp_path / "r" / "queries.jsonl").read_text().splitlines()]
    assert summary["queries"] == len(rows) == len(asked) == 64 and summary["prompts"] <= 64 + summary["identical_skipped"]
    oracle_pairs = {(r["prompt"], r["first"], r["second"]) for r in rows} | {(r["prompt"], r["second"], r["first"]) for r in rows}
    assert len(batches) == 8  # 8 oracle pairs a step: the ERM's pairs come from the same prompts, up to 24 more
    erm_pairs = [(x, c, r) for b in batches for x, c, r in zip(b.prompts, b.chosen, b.rejected) if (x, c, r) not in oracle_pairs]
    assert sum(len(b) for b in batches) == 64 + len(erm_pairs) and all(len(b) <= 32 for b in batches)
    soft = [p for b in batches for x, c, r, p in zip(b.prompts, b.chosen, b.rejected, b.probabilities()) if (x, c, r) not in oracle_pairs]
    assert len(soft) == len(erm_pairs) and all(p > 0.5 for p in soft)  # every head prefers the chosen one: so does their mean
    state = read_checkpoint(tmp_path / "r" / "checkpoints" / "last")
    assert len(state["explorer"]["erm"]["chosen"]) == 64  # the ERM's own data: oracle labels only


def test_anchored_pairs_put_the_oracles_winner_against_the_erms_worst_other_candidate():
    from sealign.explore import DuelChoice
    from sealign.explorer import Explorer, Selection
    from sealign.records import Candidates, Duels

    cands = Candidates(["x0", "x1", "x2"], [["a", "b", "c", "d"], ["e", "f", "g", "h"], ["i", "j", "i", "j"]])
    # two heads; their mean: x0 -> d worst, x1 -> e worst (c, b only look worse to one head)
    rewards = torch.tensor(
        [[[3.0, 2.0, -4.0, -1.0], [-5.0, 2.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]],
         [[3.0, -6.0, 4.0, -1.0], [-1.0, 2.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]]]
    )  # (K=2, P=3, M=4)
    choice = DuelChoice(torch.tensor([0, 1, 0]), torch.tensor([1, 2, 1]), torch.zeros(3, dtype=torch.bool))
    sel = Selection(cands, choice, Duels.pick(cands, choice.first, choice.second), cands.first_occurrences(), rewards, None, [0, 1, 2])
    explorer = Explorer("ee_ts", 0)
    # labels of the duels of prompts 2, 1, 0 in that order (the order the oracle was asked in)
    pairs, by_erm = explorer.anchored_pairs(sel, [2, 1, 0], torch.tensor([True, False, True]), wanted=5)
    # x1: the oracle prefers g (the second); e is the mean's worst. x0: the oracle prefers a; of c
    # and d the mean puts d lowest. x2 has no third distinct candidate: no pair
    assert (pairs.prompts, pairs.chosen, pairs.rejected, by_erm) == (["x1", "x0"], ["g", "a"], ["e", "d"], [True, True])
    assert explorer.anchored_pairs(sel, [2, 1, 0], torch.tensor([True, False, True]), wanted=1)[0].prompts == ["x1"]
    own, by_erm = explorer.anchored_pairs(sel, [2, 1, 0], torch.tensor([True, False, True]), wanted=5, own_pair=True)
    assert (own.prompts, own.chosen, own.rejected) == (["x2", "x1", "x0"], ["i", "g", "a"], ["j", "e", "d"])  # x2: its duel
    assert by_erm == [False, True, True]  # x2's pair is the oracle's label: not the ERM's to be scored on
    # --erm-anchors 2: the winner against the two worst others, worst first (x1: e at -3, then h at 0;
    # x0: d at -1, then c at 0), cut at `wanted`
    two, by_erm = explorer.anchored_pairs(sel, [2, 1, 0], torch.tensor([True, False, True]), wanted=3, per_duel=2)
    assert (two.prompts, two.chosen, two.rejected, by_erm) == (["x1", "x1", "x0"], ["g", "g", "a"], ["e", "h", "d"], [True] * 3)


@pytest.mark.parametrize("anchor_only, anchors", [(False, 1), (True, 1), (False, 2)])
def test_anchored_erm_pairs_never_reach_the_oracle_the_budget_nor_the_ledger(tmp_path, task_cfg, monkeypatch, anchor_only, anchors):
    """--erm-anchor adds one anchored pair per duel beside the oracle's (--erm-anchors N: up to N,
    each against another candidate); --anchor-only learns each duel after burn-in as its anchored
    pair alone (the duel itself only where its prompt has no third candidate), the last batch
    short where the budget ends."""
    batches, asked = watch_learner_and_oracle(monkeypatch)
    burn_in, budget = (16, 40) if anchor_only else (0, 48)
    cfg = TrainConfig(
        agent="sea", num_candidates=6, burn_in=burn_in, gamma=0.5 if anchors == 1 else 0.34, batch_size=16, budget=budget,
        eval_every=budget, out=str(tmp_path / "r"), anchor_only=anchor_only,
    )  # fmt: skip
    erm = ERMConfig(erm_heads=4, erm_hidden=16, erm_anchor=True, erm_anchors=anchors)
    summary = train(small_run(cfg, task_cfg, erm=erm))
    rows = [json.loads(x) for x in (tmp_path / "r" / "queries.jsonl").read_text().splitlines()]
    assert summary["queries"] == len(rows) == len(asked) == budget
    assert len({r["prompt"] for r in rows}) == len(rows)  # each prompt asked once: it names its duel below
    winner = {r["prompt"]: (r["first"] if r["first_wins"] else r["second"], {r["first"], r["second"]}) for r in rows}
    oracle_pairs = {(r["prompt"], *((r["first"], r["second"]) if r["first_wins"] else (r["second"], r["first"]))) for r in rows}
    erm_pairs = [(x, c, r) for b in batches for x, c, r in zip(b.prompts, b.chosen, b.rejected) if (x, c, r) not in oracle_pairs]
    for x, chosen, rejected in erm_pairs:  # an oracle prompt's winner against a third candidate
        assert chosen == winner[x][0] and rejected not in winner[x][1]
    if anchor_only:  # burn-in: the oracle's 16 pairs; then one pair per duel, each the duel's winner
        assert [len(b) for b in batches] == [16, 16, 8]
        assert all((x, c, r) in oracle_pairs for x, c, r in zip(batches[0].prompts, batches[0].chosen, batches[0].rejected))
        learnt = [(x, c) for b in batches for x, c in zip(b.prompts, b.chosen)]
        assert sorted(learnt) == sorted((x, w) for x, (w, _) in winner.items())
        assert len(erm_pairs) >= 20  # all but the duels without a third candidate
    else:
        assert erm_pairs and sum(len(b) for b in batches) == 48 + len(erm_pairs)
        per_prompt = Counter(x for x, _, _ in erm_pairs)
        assert max(per_prompt.values()) == anchors and len(set(erm_pairs)) == len(erm_pairs)  # N others, each once
        if anchors == 2:  # 5 oracle pairs a step, up to 10 anchored beside them: more than one per oracle label
            assert len(batches) == 10 and all(len(b) <= 15 for b in batches) and len(erm_pairs) > budget
    state = read_checkpoint(tmp_path / "r" / "checkpoints" / "last")
    assert len(state["explorer"]["erm"]["chosen"]) == budget  # the ERM's own data: oracle labels only


def test_training_oracle_pm_labels_by_the_prior_and_evaluation_stays_the_oracles(tmp_path, task_cfg):
    cfg = TrainConfig(budget=32, batch_size=16, eval_every=32, out=str(tmp_path / "r"))
    train(small_run(cfg, task_cfg, oracle=OracleConfig(train_oracle="pm")))
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    path = str(preference_model_dir(task_cfg, QUICK_PM))
    assert saved["train_oracle"] == f"rm:{path}"
    rm = AutoModelForSequenceClassification.from_pretrained(path)
    from sealign.preference_model import rewards
    from sealign.tasks import make_task

    tokenizer = make_task(task_cfg).build_tokenizer()
    rows = [json.loads(x) for x in (tmp_path / "r" / "queries.jsonl").read_text().splitlines()]
    with torch.no_grad():
        first = rewards(rm, tokenizer, [r["prompt"] for r in rows], [r["first"] for r in rows])
        second = rewards(rm, tokenizer, [r["prompt"] for r in rows], [r["second"] for r in rows])
    assert [r["first_wins"] for r in rows] == (first > second).tolist()
    metrics = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["oracle_eval_calls"] == task_cfg.n_holdout  # the win rate is judged by the task's oracle


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--agent", "sea", "--erm-gate", "0.5"], "--erm-gate must be in (0.5, 1]"),
        (["--agent", "online", "--erm-soft-labels"], "--erm-soft-labels configures the epistemic reward model, which agent online does not have: drop it"),
        (["--agent", "apl", "--erm-heads", "5", "--erm-layer", "0"], "--erm-heads and --erm-layer configure the epistemic reward model, which agent apl does not have: drop them, or use an agent with one (sea-noalign, sea, "),
        (["--agent", "sea-noalign", "--erm-gate", "1.0", "--erm-soft-labels"], "apply to the ERM-labelled pairs of a self-aligning agent (sea, sea-bon); agent sea-noalign learns from none"),
        (["--agent", "sea", "--erm-gate", "1.0", "--erm-anchor"], "--erm-anchor and --erm-gate choose the ERM's pairs two ways: drop one"),
        (["--agent", "sea-noalign", "--erm-anchor"], "--erm-anchor applies to the ERM-labelled pairs of a self-aligning agent"),
        (["--agent", "sea", "--erm-anchor", "--erm-soft-labels"], "--erm-soft-labels weighs a sampled head's own pairs"),
        (["--agent", "sea", "--erm-anchor", "--gamma", "0.3"], "--gamma must be at least 0.5, got 0.3"),
        (["--agent", "sea", "--erm-anchor", "--erm-anchors", "2", "--gamma", "0.3"], "at most 2 ERM-labelled pairs per oracle duel (--erm-anchors): --gamma must be at least 0.333, got 0.3"),
        (["--agent", "sea", "--erm-anchors", "2"], "--erm-anchors sets how many pairs --erm-anchor makes per oracle duel: add --erm-anchor"),
        (["--agent", "sea", "--erm-anchor", "--erm-anchors", "0"], "--erm-anchors must be at least 1, got 0"),
        (["--agent", "sea", "--erm-anchor", "--anchor-only", "--erm-anchors", "2"], "--anchor-only learns each duel as one anchored pair: drop --erm-anchors 2"),
        (["--agent", "sea", "--anchor-only"], "--anchor-only learns the pairs of --erm-anchor: add it"),
        (["--agent", "sea", "--erm-anchor", "--anchor-only", "--gamma", "0.7"], "whatever --gamma says: drop --gamma"),
        (["--agent", "sea", "--erm-pooling", "tokens", "--budget", "3000000"], "--erm-pooling tokens would keep"),
        (["--agent", "sea", "--erm-backbone", "pm", "--erm-logprobs"], "the preference model is a reward model"),
        (["--train-oracle", "oracle-of-delphi"], "unknown --train-oracle 'oracle-of-delphi'"),
        (["--pm-steps", "0"], "--pm-steps must be positive"),
    ],
)
def test_bad_input_is_one_line(capsys, tmp_path, argv, fragment):
    code = main(["train", *SMALL_FLAGS, *argv, "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and fragment in err[0]
    assert not (tmp_path / "r").exists()


def test_resume_refuses_an_erm_flag_as_a_changed_setting(capsys, tmp_path):
    """The run's agent is the saved one, so the agent check waits for it: the user hears the resume rule."""
    code = main(["train", "--resume", str(tmp_path / "r"), "--erm-soft-labels", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["sealign: error: --resume continues with the run's saved settings; drop --erm-soft-labels"]


def test_training_oracle_pm_refuses_a_users_data(capsys, tmp_path, prompts_jsonl):
    code = main(["train", "--data", prompts_jsonl, "--eval-size", "10", "--train-oracle", "pm", "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "belongs to the built-in task" in err[0]
    assert not (tmp_path / "r").exists()  # refused before pi_ref or anything else was built
