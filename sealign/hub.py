"""The trained policy as a Hugging Face model repository: a model card written from the run's
config.json and summary.json, and `--push-to-hub REPO` to upload the policy folder."""

from __future__ import annotations

import json
from pathlib import Path

from sealign import __version__
from sealign.agents import AGENTS


def model_card(config: dict, summary: dict) -> str:
    """README.md of the policy folder: what was trained, how, and what it measured."""
    train, oracle = config["train"], config["oracle"]
    base = config["model"]["policy"] or "the built-in keywords task's SFT pi_ref"
    data = config["data"]["data"] or "the built-in keywords task"
    tags = ["sealign", "alignment", "online-dpo" if train["agent"] == "online" else train["agent"], train["loss"]]
    win = lambda key: "not measured (no references)" if summary[key] is None else f"{summary[key]:.3f}"  # noqa: E731
    front = ["---", "library_name: transformers", "tags:", *(f"- {t}" for t in tags)]
    if config["model"]["policy"] and not Path(config["model"]["policy"]).exists():
        front.append(f"base_model: {config['model']['policy']}")
    settings = {k: train[k] for k in ("agent", "loss", "beta", "explore", "budget", "batch_size", "num_candidates", "lr", "lr_schedule", "seed")}
    return "\n".join(
        [
            *front,
            "---",
            "",
            f"# {train['agent']} {train['loss']} policy, aligned with sealign",
            "",
            f"Aligned from {base} on {data} with **{AGENTS[train['agent']].summary}**, by "
            f"sealign {__version__}, under a budget of {summary['queries']} "
            f"oracle queries (oracle: `{oracle['oracle']}`{', training labels: `' + str(oracle['train_oracle']) + '`' if oracle['train_oracle'] else ''}).",
            "",
            "| measured | value |",
            "|---|---|",
            f"| win rate vs references, pi_ref | {win('initial_win_rate')} |",
            f"| win rate vs references, this policy | {win('final_win_rate')} |",
            f"| oracle queries (labels) | {summary['queries']} |",
            f"| learner steps | {summary['steps']} |",
            f"| wall time | {summary['wall_seconds']} s |",
            "",
            "Settings (the run's config.json holds all of them):",
            "",
            "```json",
            json.dumps(settings, indent=1),
            "```",
            "",
        ]
    )


def push_policy(policy_dir: Path, repo: str) -> str:
    """Upload the policy folder (model card included) to the hub; returns the repo's URL. The
    token comes from `huggingface_hub`'s usual places (HF_TOKEN, `hf auth login`)."""
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(repo, exist_ok=True)
    api.upload_folder(repo_id=repo, folder_path=str(policy_dir), commit_message=f"sealign {__version__}: aligned policy")
    return str(url)
