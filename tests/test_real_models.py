"""Any Hugging Face policy, a reward-model oracle and user data, through the same CLI, offline."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from sealign.cli import main
from sealign.config import DataConfig, OracleConfig
from sealign.errors import SealignError
from sealign.oracles import make_oracle
from sealign.tiny import CHAT_TEMPLATE
from sealign.userdata import load_user_data

SHORT = ["--budget", "8", "--batch-size", "4", "--eval-every", "8", "--eval-size", "6", "--max-new-tokens", "4", "--quiet"]


def test_reward_model_oracle_is_bradley_terry_over_its_scores(tiny_models, task):
    oracle = make_oracle(OracleConfig(oracle=f"rm:{tiny_models['rm']}", oracle_batch_size=3))
    records = task.records("holdout")[:5]
    prompts, a, b = [r.prompt for r in records], [r.reference for r in records], ["apple"] * 5
    scores_a, scores_b = oracle.score(prompts, a), oracle.score(prompts, b)
    # batching must not change a score: each one alone equals the batched one
    alone = torch.tensor([oracle.score([p], [y]).item() for p, y in zip(prompts, a)], dtype=torch.float64)
    assert torch.allclose(scores_a, alone, atol=1e-5)
    assert torch.allclose(oracle.compare(prompts, a, b), torch.sigmoid(scores_a - scores_b), atol=1e-6)  # tau = 1 for an rm
    labels = oracle.label(prompts, a, b)
    assert labels.answered.all() and torch.equal(labels.first_wins, scores_a > scores_b)


def test_reward_model_reads_through_its_own_chat_template(tiny_models, task):
    with_template = make_oracle(OracleConfig(oracle=f"rm:{tiny_models['rm']}")).reward_fn
    without = make_oracle(OracleConfig(oracle=f"rm:{tiny_models['rm']}", rm_chat_template=False)).reward_fn
    assert with_template.chat and with_template.tokenizer.chat_template == CHAT_TEMPLATE
    assert not without.chat


@pytest.mark.parametrize("arch, agent", [("gpt2", "online"), ("llama", "sea")])
def test_hf_policy_rm_oracle_and_jsonl_through_the_cli(tmp_path, tiny_models, prompts_jsonl, arch, agent):
    out = tmp_path / "run"
    extra = ["--erm-heads", "2", "--erm-hidden", "8", "--num-candidates", "3", "--burn-in", "4"] if agent == "sea" else []
    code = main(
        ["train", "--agent", agent, "--policy", tiny_models[arch], "--oracle", f"rm:{tiny_models['rm']}",
         "--data", prompts_jsonl, *SHORT, *extra, "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["queries"] == 8 and summary["labels_in_ledger"] == 8 and summary["unanswered"] == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["policy"] == tiny_models[arch] and config["oracle"]["oracle"] == f"rm:{tiny_models['rm']}"
    assert config["data"]["data"] == prompts_jsonl
    rows = [json.loads(line) for line in (out / "queries.jsonl").read_text().splitlines()]
    held_out = {r.prompt for r in load_user_data(DataConfig(data=prompts_jsonl, eval_size=6)).eval}
    assert not held_out & {r["prompt"] for r in rows}  # the agent never learns on its evaluation prompts
    assert main(["train", "--resume", str(out), "--quiet"]) == 0  # a finished run resumes to the same end


def test_separate_reference_chat_template_and_long_prompts(tmp_path, tiny_models, prompts_jsonl, task):
    limit = 11  # <bos> + words + marker: some keywords prompts are longer
    lengths = [len(r.prompt.split()) + 1 for r in task.records("holdout")[:40]]
    out = tmp_path / "run"
    code = main(
        ["train", "--policy", tiny_models["gpt2"], "--ref", tiny_models["llama"], "--chat-template", "--oracle",
         f"rm:{tiny_models['rm']}", "--data", prompts_jsonl, "--max-prompt-tokens", str(limit), *SHORT, "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    skipped = json.loads((out / "summary.json").read_text())["prompts_too_long"]
    # the chat template replaces <bos> by a trailing space: the template's text has the same word count
    assert skipped["train"] + skipped["eval"] == sum(n - 1 > limit for n in lengths) > 0


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_csv_and_parquet_with_custom_keys(tmp_path, task, suffix):
    records = task.records("holdout")[:12]
    frame = pd.DataFrame({"post": [r.prompt for r in records], "summary": [r.reference for r in records]})
    path = tmp_path / f"data{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path)
    data = load_user_data(DataConfig(data=str(path), prompt_key="post", reference_key="summary", eval_size=4))
    assert len(data.train) == 8 and len(data.eval) == 4
    assert {r.prompt for r in data.train + data.eval} == {r.prompt for r in records}


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--oracle", "oops:x"], "unknown --oracle 'oops:x'"),
        (["--oracle", "rm:/no/such/rm"], "--oracle rm: '/no/such/rm': no such file or folder"),
        (["--oracle", f"rm:{__file__}"], "cannot load reward model"),
        (["--policy", "/no/such/policy"], "no such file or folder"),
        (["--ref", "/tmp"], "cannot load policy '/tmp'"),
        (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"], "--device"),
        (["--data", "/no/such.jsonl"], "no such file or folder"),
        (["--prompt-key", "post"], "missing field 'post'"),
        (["--oracle", "judge:gpt", "--oracle-temperature", "0.5"], "--oracle-temperature"),
    ],
)
def test_bad_model_data_and_oracle_input(capsys, tmp_path, tiny_models, prompts_jsonl, argv, fragment):
    base = ["train", "--policy", tiny_models["gpt2"], "--data", prompts_jsonl, "--oracle", f"rm:{tiny_models['rm']}"]
    code = main([*base, *SHORT, *argv, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("sealign: error:") == 1 and fragment in err, err
    assert not (tmp_path / "run").exists()


def test_lora_trains_adapters_only_and_saves_a_plain_policy(tmp_path, tiny_models, prompts_jsonl):
    from sealign.policy import load_policy

    out = tmp_path / "run"
    code = main(
        ["train", "--policy", tiny_models["gpt2"], "--lora-r", "4", "--lr", "1e-2", "--oracle", f"rm:{tiny_models['rm']}",
         "--data", prompts_jsonl, *SHORT, "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    before, _ = load_policy(tiny_models["gpt2"])
    after, _ = load_policy(out / "policy")  # a plain checkpoint: adapters merged
    b, a = before.state_dict(), after.state_dict()
    assert a.keys() == b.keys()
    changed = {k for k in b if not torch.equal(a[k], b[k])}
    # LoRA adapts the attention and MLP projections; embeddings and layer norms stay as they were
    assert changed and all(".attn." in k or ".mlp." in k for k in changed)


def test_eval_any_policy_with_a_reward_model_oracle(tmp_path, tiny_models, prompts_jsonl, capsys):
    path = tmp_path / "out.json"
    argv = ["eval", "--policy", tiny_models["llama"], "--oracle", f"rm:{tiny_models['rm']}", "--data", prompts_jsonl]
    assert main([*argv, "--eval-size", "10", "--max-new-tokens", "3", "--best-of", "2", "--json", str(path)]) == 0
    stats = json.loads(path.read_text())
    assert stats["prompts"] == 10 and 0 <= stats["win_rate"] <= 1 and stats["unanswered"] == 0
    assert main(["eval", "--oracle", "judge:gpt", "--best-of", "2"]) == 2
    assert "has none" in capsys.readouterr().err


def test_dataset_folder_with_train_and_test_splits(tmp_path, task):
    """A folder (or hub dataset) with its own splits: the eval split is used, nothing held out."""
    from sealign.data import write_records

    records = task.records("holdout")
    write_records(tmp_path / "ds" / "train.jsonl", records[:10])
    write_records(tmp_path / "ds" / "test.jsonl", records[10:14])
    data = load_user_data(DataConfig(data=str(tmp_path / "ds"), max_train=7))
    assert data.train == records[:7] and data.eval == records[10:14]
    with pytest.raises(SealignError, match="no split 'dev'"):
        load_user_data(DataConfig(data=str(tmp_path / "ds"), train_split="dev"))
