"""The GPU recipes under recipes/: every one loads and validates (none can run here), the SEA
hyper-parameters of §5.2 are the paper's, and the model-size variants do not drift apart."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from sealign.cli import COMMANDS, _Parser, config_args, main, refuse_ignored_flags
from sealign.config import RunConfig

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))
POLICY_RECIPES = [p for p in RECIPES if p.name.startswith("tldr-pythia-")]


def parse(command: str, path: Path, *extra: str) -> dict:
    """Every config dataclass of `command` built from the recipe (validation included), by field name."""
    parser = _Parser(COMMANDS[command][1])
    cfgs = parser.parse_args_into_dataclasses(args=[*config_args(str(path), parser), *extra])
    return {name: value for cfg in cfgs for name, value in vars(cfg).items()}


@pytest.fixture(autouse=True)
def _pretend_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the recipes ask for cuda; this machine has none


def test_there_are_recipes_for_every_paper_scale_and_the_oracle():
    assert {p.name for p in RECIPES} == {"tldr-skywork-oracle.yaml", *(f"tldr-pythia-{s}.yaml" for s in ("1b", "2.8b", "6.9b"))}


@pytest.mark.parametrize("path", POLICY_RECIPES, ids=lambda p: p.stem)
def test_policy_recipes_hold_the_papers_hyper_parameters(path):
    cfg = parse("train", path, "--out", "-")
    size = path.stem.removeprefix("tldr-pythia-")
    assert cfg["policy"] == f"trl-lib/pythia-{size}-deduped-tldr-sft" and cfg["reference_key"] == f"pythia-{size}-reference"
    paper = dict(agent="sea", loss="dpo", beta=0.1, erm_heads=20, erm_hidden=128, num_candidates=20, train_temperature=0.7,
                 lr=5e-7, lr_schedule="cosine", gamma=0.7, burn_in=1000, budget=50_000, max_train=50_000)  # fmt: skip
    assert {k: cfg[k] for k in paper} == paper
    assert cfg["oracle"] == "http://127.0.0.1:8000" and cfg["device"] == "cuda"
    for loss, beta in (("ipo", "0.5"), ("slic", "0.2")):  # the other DAP losses are one override away
        assert parse("train", path, "--out", "-", "--loss", loss, "--beta", beta)["loss"] == loss


def test_oracle_recipe_serves_skywork():
    cfg = parse("serve-oracle", RECIPES[[p.name for p in RECIPES].index("tldr-skywork-oracle.yaml")])
    assert cfg["oracle"] == "rm:Skywork/Skywork-Reward-Llama-3.1-8B" and cfg["port"] == 8000 and cfg["oracle_device"] == "cuda"


def test_size_variants_differ_only_in_size_specific_settings():
    size_specific = {"policy", "reference_key", "dtype", "lora_r", "lora_alpha", "micro_batch_size", "generation_batch_size"}
    recipes = [yaml.safe_load(p.read_text()) for p in POLICY_RECIPES]
    shared = [{k: v for k, v in r.items() if k not in size_specific} for r in recipes]
    assert all(s == shared[0] for s in shared)


def test_command_line_overrides_the_recipe_and_bad_recipes_are_one_line(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("best_of: 0\n")
    assert main(["eval", "--config", str(recipe)]) == 2 and "--best-of" in capsys.readouterr().err
    recipe.write_text("no_such_option: 1\n")
    assert main(["eval", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.count("sealign: error:") == 1 and "unknown option 'no_such_option'" in err
    recipe.write_text("budget: [1, 2\n")
    assert main(["train", "--config", str(recipe)]) == 2 and "not valid YAML" in capsys.readouterr().err
    recipe.write_text("budget: 64\nchat_template: true\n")
    cfg = parse("train", recipe, "--out", "-", "--budget", "32")
    assert cfg["budget"] == 32 and cfg["chat_template"] is True


@pytest.mark.parametrize("path", POLICY_RECIPES, ids=lambda p: p.stem)
def test_the_other_arms_run_from_a_recipe_and_typed_erm_flags_for_them_are_refused(path, tmp_path, capsys):
    """A recipe describes SEA's ERM; `--agent online|offline|apl|xpo` on the command line runs the
    baselines from it as its header says. An --erm-* flag typed for such an agent would be ignored:
    refused in one line."""
    parser = _Parser(COMMANDS["train"][1])
    for agent in ("online", "offline", "apl", "xpo"):
        typed = ["--agent", agent, "--out", "-", *(["--num-candidates", "2"] if agent == "xpo" else [])]
        task, policy, sft, oracle, erm, model, data, train, backend, pm, _ = parser.parse_args_into_dataclasses(
            args=[*config_args(str(path), parser), *typed]
        )
        assert erm.erm_backbone is not None  # the recipe's, not used by this agent
        refuse_ignored_flags(typed, train)
        RunConfig(train, task, policy, sft, oracle, erm, model, data, pm, backend)  # validates
    code = main(["train", "--config", str(path), "--agent", "online", "--erm-heads=5", "--erm_layer", "0", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [
        "sealign: error: --erm-heads and --erm-layer configure the epistemic reward model, which agent online does not "
        "have: drop them, or use an agent with one (sea-noalign, sea, bon-passive, bon-active, sea-bon, erm-bon)"
    ]
    assert not (tmp_path / "r").exists()
