"""Estimated peak memory per GPU of each recipe (issue 21), before and after the memory options:
the whole batch in one learner pass and 256 prompts x M sampled at once ("before", what the code
did until micro-batching), against the recipe's own --micro-batch-size, --gradient-checkpointing
and --generation-batch-size ("after").

The models are built on PyTorch's meta device (shapes without weights), so this runs anywhere
in seconds; their architecture is read from the hub's config when it is cached here, else from
the published Pythia dimensions below. Sequences are at their worst case: the recipe's
--max-prompt-tokens plus --max-new-tokens plus <eos>.

Run: .venv/bin/python benchmarks/memory_estimate.py
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GPTNeoXConfig

from sealign.cli import COMMANDS, _Parser, config_args
from sealign.config import RunConfig
from sealign.memory import estimate, format_bytes, run_workload, shape_of
from sealign.models import add_lora

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("tldr-pythia-*.yaml"))
# Pythia's published dimensions (Biderman et al. 2023, Table 1; the models' config.json)
PYTHIA = {
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=8, intermediate_size=8192, vocab_size=50304),
    "2.8b": dict(hidden_size=2560, num_hidden_layers=32, num_attention_heads=32, intermediate_size=10240, vocab_size=50304),
    "6.9b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, intermediate_size=16384, vocab_size=50432),
}


def recipe_run(path: Path) -> RunConfig:
    parser = _Parser(COMMANDS["train"][1])
    torch.cuda.is_available = lambda: True  # the recipes ask for cuda; validating them needs no GPU
    cfgs = parser.parse_args_into_dataclasses(args=[*config_args(str(path), parser), "--out", "-"])
    by_type = {type(c).__name__: c for c in cfgs}
    return RunConfig(
        by_type["TrainConfig"], by_type["TaskConfig"], by_type["PolicyConfig"], by_type["SFTConfig"], by_type["OracleConfig"],
        by_type["ERMConfig"], by_type["ModelConfig"], by_type["DataConfig"], by_type["PreferenceModelConfig"], by_type["BackendConfig"],
    )  # fmt: skip


def meta_policy(run: RunConfig) -> torch.nn.Module:
    size = Path(run.model.policy).name.split("-")[1]
    try:
        config = AutoConfig.from_pretrained(run.model.policy, local_files_only=True)
    except OSError:  # not cached here: the published dimensions
        config = GPTNeoXConfig(**PYTHIA[size], tie_word_embeddings=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, run.model.dtype))
        if run.model.lora_r:
            model = add_lora(model, run.model.lora_r, run.model.lora_alpha, run.train.seed)
    return model


def main() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)  # peft on transformers 5 names a renamed attribute
    print("| recipe | micro-batch (pairs) | grad. ckpt | rows sampled at once | learner step | kv cache | peak per GPU |")
    print("|---|---|---|---|---|---|---|")
    for path in RECIPES:
        after = recipe_run(path)
        before = dataclasses.replace(
            after,
            train=dataclasses.replace(after.train, micro_batch_size=None, gradient_checkpointing=False),
            model=dataclasses.replace(after.model, generation_batch_size=None),
        )
        shape = shape_of(meta_policy(after))
        seq_len = after.data.max_prompt_tokens + after.model.max_new_tokens + 1
        for label, run in (("before", before), ("after", after)):
            work = run_workload(run, seq_len)
            parts = estimate(shape, work)
            print(
                f"| {path.stem} ({label}) | {work.micro_pairs} | {'yes' if work.gradient_checkpointing else 'no'} | "
                f"{work.generation_rows} | {format_bytes(parts['logits'] + parts['activations'])} | {format_bytes(parts['kv cache'])} | "
                f"**{format_bytes(parts['peak'])}** |"
            )


if __name__ == "__main__":
    main()
