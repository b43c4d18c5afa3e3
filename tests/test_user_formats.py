"""Data as users have it: prompt-only rows, chat-format prompts, a datasets.Dataset from Python."""

from __future__ import annotations

import json

import pytest

from sealign.cli import main
from sealign.data import conversation, messages_of, prompt_text, read_records, record_from_row

SHORT = ["--budget", "8", "--batch-size", "4", "--eval-every", "8", "--eval-size", "6", "--max-new-tokens", "4", "--quiet"]


def _jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_rows_in_every_form_become_records():
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "apple river TL;DR:"}]
    assert record_from_row({"prompt": "x TL;DR:"}).reference is None  # prompt-only
    record = record_from_row({"prompt": chat, "completion": [{"role": "assistant", "content": "apple"}]}, reference_key="completion")
    assert messages_of(record.prompt) == chat and record.reference == "apple"
    assert prompt_text(record.prompt) == "system: be brief\n\nuser: apple river TL;DR:"
    assert messages_of("plain [{\"role\": text") is None and prompt_text("plain") == "plain"
    assert conversation(chat) == record.prompt  # one canonical string per conversation
    for row, message in [({"prompt": [{"role": "user"}]}, "list of {role, content}"), ({"prompt": "x", "reference": 3}, "must be a string"), ([], "JSON object")]:
        with pytest.raises(ValueError, match=message):
            record_from_row(row)


def test_prompt_only_data_trains_and_skips_the_win_rate_with_a_notice(tmp_path, tiny_models, task, capsys):
    rows = [{"prompt": r.prompt} for r in task.records("holdout")[:30]]
    out = tmp_path / "run"
    code = main(["train", "--policy", tiny_models["gpt2"], "--oracle", f"rm:{tiny_models['rm']}", "--data", _jsonl(tmp_path / "p.jsonl", rows), *SHORT, "--out", str(out)])
    assert code == 0 and "the win rate is not measured" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["queries"] == 8 and summary["final_win_rate"] is None
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["win_rate"] for m in metrics] == [None, None] and "online_win_rate" not in metrics[-1]


def test_chat_format_prompts_run_through_the_chat_template(tmp_path, tiny_models, task):
    rows = [{"prompt": [{"role": "user", "content": r.prompt}], "reference": r.reference} for r in task.records("holdout")[:30]]
    out = tmp_path / "run"
    code = main(["train", "--policy", tiny_models["llama"], "--oracle", f"rm:{tiny_models['rm']}", "--data", _jsonl(tmp_path / "c.jsonl", rows), *SHORT, "--out", str(out)])
    assert code == 0
    asked = [json.loads(line) for line in (out / "queries.jsonl").read_text().splitlines()]
    assert len(asked) == 8 and all(messages_of(r["prompt"])[0]["role"] == "user" for r in asked)
    assert json.loads((out / "summary.json").read_text())["final_win_rate"] is not None
    records = read_records(tmp_path / "c.jsonl")
    assert messages_of(records[0].prompt) == rows[0]["prompt"]


def test_chat_prompts_need_a_tokenizer_with_a_chat_template(tmp_path, tiny_models, task, capsys):
    from sealign.policy import load_policy

    model, tokenizer = load_policy(tiny_models["gpt2"])
    tokenizer.chat_template = None
    model.save_pretrained(tmp_path / "plain")
    tokenizer.save_pretrained(tmp_path / "plain")
    rows = [{"prompt": [{"role": "user", "content": r.prompt}], "reference": r.reference} for r in task.records("holdout")[:30]]
    code = main(["train", "--policy", str(tmp_path / "plain"), "--oracle", f"rm:{tiny_models['rm']}", "--data", _jsonl(tmp_path / "c.jsonl", rows), *SHORT, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no chat template" in err[0] and not (tmp_path / "r").exists()


def test_a_datasets_dataset_from_python_trains_and_resumes(tmp_path, tiny_models, task):
    import datasets

    import sealign

    ds = datasets.Dataset.from_list([{"prompt": r.prompt, "reference": r.reference} for r in task.records("holdout")[:30]])
    run = sealign.run_config(["--policy", tiny_models["gpt2"], "--oracle", f"rm:{tiny_models['rm']}", *SHORT[:-1], "--out", str(tmp_path / "r")])
    summary = sealign.train(run, data=ds)
    assert summary["queries"] == 8
    staged = json.loads((tmp_path / "r" / "config.json").read_text())["data"]["data"]
    assert staged.endswith(".jsonl") and [json.loads(x)["prompt"] for x in open(staged)] == ds["prompt"]
    assert sealign.resume(tmp_path / "r")["labels_asked_this_session"] == 0
