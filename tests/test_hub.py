"""The trained policy's model card, and --push-to-hub against a stand-in of the hub's API."""

from __future__ import annotations

import json

from conftest import SMALL_FLAGS
from sealign.cli import main

RUN = ["train", *SMALL_FLAGS, "--budget", "16", "--batch-size", "16", "--eval-every", "16", "--quiet"]


def test_push_to_hub_uploads_the_policy_with_a_model_card(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    class StandInApi:  # no network here: record what would be sent
        def create_repo(self, repo_id, exist_ok):
            calls.append(("create", repo_id, exist_ok))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, repo_id, folder_path, commit_message):
            from pathlib import Path

            calls.append(("upload", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))

    monkeypatch.setattr(huggingface_hub, "HfApi", StandInApi)
    assert main([*RUN, "--push-to-hub", "me/aligned", "--out", str(tmp_path / "r")]) == 0
    assert calls[0] == ("create", "me/aligned", True)
    assert calls[1][0] == "upload" and {"README.md", "config.json", "model.safetensors"} <= set(calls[1][2])
    card = (tmp_path / "r" / "policy" / "README.md").read_text()
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert card.startswith("---\nlibrary_name: transformers\ntags:\n- sealign")
    assert "online dpo policy, aligned with sealign" in card and f"| oracle queries (labels) | {summary['queries']} |" in card
    assert f"| win rate vs references, this policy | {summary['final_win_rate']:.3f} |" in card


def test_a_failed_push_is_one_line_and_keeps_the_run(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    class Offline:
        def create_repo(self, repo_id, exist_ok):
            raise OSError("cannot reach the hub")

    monkeypatch.setattr(huggingface_hub, "HfApi", Offline)
    assert main([*RUN, "--push-to-hub", "me/aligned", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the hub" in err[0] and "the policy is saved" in err[0]
    assert (tmp_path / "r" / "summary.json").is_file() and (tmp_path / "r" / "policy" / "README.md").is_file()


def test_a_bad_repo_name_fails_before_any_work(tmp_path, capsys):
    assert main([*RUN, "--push-to-hub", "not a/repo/name", "--out", str(tmp_path / "r")]) == 2
    assert "not a hub repo name" in capsys.readouterr().err and not (tmp_path / "r").exists()
