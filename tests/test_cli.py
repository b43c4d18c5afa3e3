"""The `sealign` command: every bad input is one clear line on stderr, exit 2, before any work."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import QUICK_SFT, TINY
from sealign.cli import main
from sealign.policy import build_policy

SMALL = ["--n-train", "300", "--n-holdout", "40"]
QUICK = ["--sft-steps", str(QUICK_SFT.sft_steps), "--sft-batch-size", "16", "--sft-warmup", "5"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_fits_80_columns(out: str) -> None:
    """A table of figures as printed into a non-terminal (rich's default width, 80): no header
    or cell cut short with an ellipsis, no line beyond 80 characters."""
    assert out.strip() and "…" not in out and max(map(len, out.splitlines())) <= 80, out


def assert_one_error_line(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("sealign: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["eval", "--task", "nosuchtask"], ["unknown task 'nosuchtask'", "keywords"]),
        (["eval", "--policy", "/no/such/model"], ["/no/such/model", "no such file or folder"]),
        (["eval", "--policy", "./no-such-model"], ["--policy './no-such-model'", "no such file or folder"]),
        (["eval", "--policy", "../no-such-model"], ["no such file or folder"]),
        (["eval", "--policy", "runs/x/policy"], ["--policy 'runs/x/policy'", "not a hub name"]),
        (["eval", "--data", "prompts.jsonl"], ["--data 'prompts.jsonl'", "no such file or folder"]),
        (["eval", "--task-seed", "abc"], ["--task_seed", "abc"]),
        (["eval", "--best-of", "0"], ["--best-of"]),
        (["eval", "--label-mode", "coin"], ["coin"]),
        (["eval", "--flip-prob", "0.7"], ["--flip-prob"]),
        (["sft", "--size", "huge"], ["huge"]),
        (["sft", "--sft-steps", "0"], ["--sft-steps"]),
        (["eval", "--bogus"], ["--bogus"]),
        (["train-everything"], ["unknown command"]),
    ],
)
def test_bad_input_is_one_line(capsys, argv, fragments):
    code, _, err = run_cli(capsys, *argv)
    assert_one_error_line(code, err, *fragments)


GOOD_LINE = '{"prompt": "apple river TL;DR:", "reference": "apple"}\n'


@pytest.mark.parametrize(
    "content, line, fragment",
    [
        (GOOD_LINE + '{"prompt": "river TL;DR:"}\n', 2, "no reference (sealign eval measures the win rate against one)"),
        (GOOD_LINE + '{"prompt": "river TL;DR:", "reference": 3}\n', 2, "field 'reference' must be a string"),
        (GOOD_LINE + '{"reference": "river"}\n', 2, "missing field 'prompt'"),
        (GOOD_LINE + "\n{not json\n", 3, "not valid JSON"),
        (GOOD_LINE + '{"prompt": "hello world TL;DR:", "reference": "hello"}\n', 2, "hello"),  # outside the vocabulary
        (GOOD_LINE + '{"prompt": "apple river", "reference": "apple"}\n', 2, "TL;DR:"),
    ],
)
def test_bad_jsonl_names_file_and_line(capsys, tmp_path, content, line, fragment):
    path = tmp_path / "prompts.jsonl"
    path.write_text(content)
    code, _, err = run_cli(capsys, "eval", "--data", str(path))
    assert_one_error_line(code, err, f"{path}:{line}", fragment)


def test_eval_without_built_reference_says_what_to_do(capsys):
    code, _, err = run_cli(capsys, "eval", *SMALL, "--task-seed", "77")
    assert_one_error_line(code, err, "sealign sft")


def test_sft_then_eval_on_exported_data(capsys, tmp_path):
    code, _, _ = run_cli(capsys, "sft", *SMALL, *QUICK, "--quiet")
    assert code == 0
    data = tmp_path / "holdout.jsonl"
    assert run_cli(capsys, "export", *SMALL, "--out", str(data))[0] == 0
    report = tmp_path / "eval.json"
    code, out, _ = run_cli(capsys, "eval", *SMALL, *QUICK, "--data", str(data), "--json", str(report), "--quiet")
    assert code == 0 and "win rate" in out
    assert_fits_80_columns(out)
    figures = json.loads(report.read_text())
    assert figures["prompts"] == 40 and 0.0 <= figures["win_rate"] <= 1.0


def test_eval_any_saved_policy(capsys, tmp_path, task):
    torch.manual_seed(0)
    tokenizer = task.build_tokenizer()
    build_policy(TINY, tokenizer).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    report = tmp_path / "eval.json"
    code, out, _ = run_cli(capsys, "eval", *SMALL, "--policy", str(tmp_path), "--json", str(report), "--best-of", "4")
    assert code == 0
    assert_fits_80_columns(out)
    assert json.loads(report.read_text())["decoding"].startswith("best-of-4")


def test_console_script_entry_point():
    result = subprocess.run([sys.executable, "-m", "sealign", "--help"], capture_output=True, text=True, check=True)
    assert "demo" in result.stdout and "eval" in result.stdout


def test_json_into_missing_folder(capsys):
    code, _, err = run_cli(capsys, "export", "--out", "/tmp/x.jsonl", "--json", "/no/such/dir/out.json")
    assert_one_error_line(code, err, "/no/such/dir/out.json")


def test_version(capsys):
    from sealign import __version__

    assert main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"sealign {__version__}"


def test_train_help_lists_each_option_once_in_groups(capsys):
    import re

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    options = re.findall(r"^  (--[a-z0-9-]+)", text, flags=re.M)  # the first name of every entry
    assert len(options) == len(set(options)) and "--task-seed" in options and "--task_seed" not in text
    assert "--quiet [QUIET]" not in text and "--rm-chat-template / --no-rm-chat-template" in text
    assert "(default: None)" not in text and text.count("(default:") < len(options)
    for group in ("task:", "oracle:", "ERM (epistemic reward model):", "agent and loop:", "backend:", "output:"):
        assert f"\n{group}\n" in text


@pytest.mark.parametrize("description,total,info", [("pretrain preference model", 1500, "loss 0.412"), ("online simpo", 50000, "win 0.653  loss 0.693")])
def test_progress_bar_keeps_its_counts_and_eta_in_80_columns(monkeypatch, description, total, info):
    import io
    import re

    from rich.console import Console

    from sealign import progress

    screen = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=screen, width=80, force_terminal=True, color_system=None))
    with progress.progress_bar() as bar:
        bar.update(bar.add_task(description, total=total, info=""), completed=total // 3, info=info)
    line = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue()).splitlines()[-1].rstrip()  # the last frame
    assert f"{total // 3}/{total}" in line and "-:--:--" in line and line.endswith(info) and "…" not in line
