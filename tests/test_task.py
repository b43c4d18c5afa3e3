"""The built-in keywords task: data, hidden reward, tokenizer."""

from __future__ import annotations

import math

import pytest
from transformers import AutoTokenizer

from sealign.config import TaskConfig
from sealign.data import read_records, write_records
from sealign.tasks import make_task
from sealign.tasks.keywords import MARKER, RewardWeights, keywords_reward, post_words

SALIENCE = {"a": 0.9, "b": 0.7, "c": 0.2, "d": 0.6, "z": 0.99}
POST = ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    "summary, expected, why",
    [
        (["a", "b"], (0.9 - 0.5) + (0.7 - 0.5), "two salient words"),
        (["a", "b", "d"], 0.4 + 0.2 + 0.1, "the optimum: every word with salience > 0.5"),
        (["a", "c"], 0.4 - 0.3, "a non-salient word costs more than it brings"),
        (["a", "z"], 0.4 - 1.0, "z is not in the post: outside penalty, its salience ignored"),
        (["a", "a"], 0.4 - 1.0, "a repetition pays the repeat penalty and earns nothing"),
        ([], -2.0, "empty summary"),
    ],
)
def test_reward_hand_worked(summary, expected, why):
    assert keywords_reward(POST, summary, SALIENCE) == pytest.approx(expected), why


def test_reward_overlong_penalty():
    salience = {str(i): 0.5 for i in range(12)}  # every word exactly worth its cost: net 0
    post = list(salience)
    w = RewardWeights()
    assert keywords_reward(post, post[:8], salience, w) == pytest.approx(0.0)
    assert keywords_reward(post, post[:11], salience, w) == pytest.approx(-3.0)  # 3 words past max_words


def test_records_deterministic_and_seed_dependent():
    a, b = make_task(TaskConfig(n_train=50, n_holdout=10)), make_task(TaskConfig(n_train=50, n_holdout=10))
    assert a.records("train") == b.records("train") and a.records("holdout") == b.records("holdout")
    assert a.salience == b.salience
    c = make_task(TaskConfig(task_seed=1, n_train=50, n_holdout=10))
    assert c.salience != a.salience
    assert c.records("train") != a.records("train")
    # train and holdout are different prompt streams
    assert not {r.prompt for r in a.records("train")} & {r.prompt for r in a.records("holdout")}


def test_prompt_format(task):
    record = task.records("holdout")[0]
    words = record.prompt.split()
    assert words[-1] == MARKER
    post = post_words(record.prompt)
    assert 8 <= len(post) <= 14 and len(set(post)) == len(post)
    assert set(record.reference.split()) <= set(post)


def test_optimal_summary_is_best(task):
    """The optimal summary is never beaten by the reference (the reward's argmax)."""
    for record in task.records("holdout"):
        best, ref = task.reward([record.prompt] * 2, [task.optimal_summary(record.prompt), record.reference])
        assert best >= ref


def test_tokenizer_round_trip(task, tmp_path):
    tok = task.build_tokenizer()
    text = task.records("holdout")[3].prompt
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == len(text.split()) + 1
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok("unseenword apple", add_special_tokens=False)["input_ids"][0] == tok.unk_token_id
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(text)["input_ids"] == ids
    assert loaded.pad_token == "<pad>" and loaded.eos_token == "<eos>"


def test_jsonl_round_trip(task, tmp_path):
    path = tmp_path / "holdout.jsonl"
    assert write_records(path, task.records("holdout")) == len(task.records("holdout"))
    assert read_records(path) == task.records("holdout")


def test_salience_is_uniform_ish(task):
    values = list(task.salience.values())
    assert len(values) == len(task.words) >= 300
    assert math.isclose(sum(values) / len(values), 0.5, abs_tol=0.05)
