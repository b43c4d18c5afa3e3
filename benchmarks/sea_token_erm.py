"""SEA with per-token ERM heads: each head scores every response token from the backbone's states
at `--erm-layer` (and, with `--erm-logprobs`, its log-prob of the token), and a response's
reward is the sum of its tokens' scores. Run with any `sealign train` flags, so that it can be
set beside real SEA and online DPO runs of a study.

    .venv/bin/python benchmarks/sea_token_erm.py [--out runs/sea-token-erm] [TRAIN FLAGS ...]

TRAIN FLAGS follow `--agent sea --loss dpo --budget 5000 --eval-every 250 --seed 0`, and a flag
given again wins (e.g. the chosen setting: `--erm-backbone pi_ref --erm-layer 0 --erm-logprobs
--explore ee_ts --burn-in 100 --num-candidates 10 --beta 0.05 --lr-schedule constant_with_warmup`).

Offline (`benchmarks/erm_token_heads.py`) such heads keep learning where the pooled ERM stops
(0.813 against 0.775 held-out accuracy after 4,000 labels). This asks whether that reaches the
loop. It is an experiment, not a package option: the per-token features of a response are
flattened into one vector, T tokens of [features, mask] (T = the response limit + <eos>), so the
explorer, the ERM's buffer and its checkpoints carry them unchanged; the ensemble reads them
back per token.
"""

from __future__ import annotations

import argparse

import torch
from erm_token_heads import left_aligned
from erm_token_heads import rewards as token_rewards  # per-token MLP scores, summed
from sea_oracle_erm import train_and_report
from transformers.utils import logging as hf_logging

from sealign import erm as erm_mod
from sealign.cli import run_config
from sealign.tasks import make_task

DEFAULT_FLAGS = ["--agent", "sea", "--loss", "dpo", "--budget", "5000", "--eval-every", "250", "--seed", "0"]


def per_token(tokens: int):
    """Patch Backbone.features, init_heads and ensemble_rewards for responses of ≤ `tokens` tokens."""
    pooled_init, pooled_heads = erm_mod.Backbone.__init__, erm_mod.init_heads

    def init(self, *args, **kwargs):
        pooled_init(self, *args, **kwargs)
        self.width = tokens * (self.model.config.hidden_size + self.logprobs + 1)  # per token: states, log-prob, mask

    @torch.no_grad()
    def features(self, prompts, responses):
        read = self._after_shared_prompt if erm_mod.is_decoder(self.model) else self._whole
        out = []
        for start in range(0, len(prompts), self.batch_size):
            hidden, logp, mask = read(prompts[start : start + self.batch_size], responses[start : start + self.batch_size])
            if mask.sum(1).max() > tokens:
                raise ValueError(f"a response of more than {tokens} tokens")
            x = hidden.float() if logp is None else torch.cat([hidden.float(), logp[..., None].float()], -1)  # (b, T', d)
            x, m = left_aligned(x, mask, tokens)
            out.append(torch.cat([x, m[..., None].float()], -1).flatten(1).cpu())  # (b, T * (d + 1))
        return torch.cat(out)

    def init_heads(num_heads, width, hidden, generator):
        return pooled_heads(num_heads, width // tokens - 1, hidden, generator)  # one token's features in

    def ensemble_rewards(params, features):
        x = features.reshape(*features.shape[:-1], tokens, -1)
        return token_rewards(params, x[..., :-1], x[..., -1])  # (K, N): Σ_t g_k(token t)

    erm_mod.Backbone.__init__ = init
    erm_mod.Backbone.features = features
    erm_mod.init_heads = init_heads
    erm_mod.ensemble_rewards = ensemble_rewards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/sea-token-erm")
    args, flags = parser.parse_known_args()
    hf_logging.disable_progress_bar()
    flags = [*DEFAULT_FLAGS, *flags]  # argparse keeps a flag's last value
    cfg = run_config([*flags, "--out", args.out])
    per_token((cfg.model.max_new_tokens or make_task(cfg.task).max_new_tokens) + 1)
    train_and_report(cfg, f"SEA with per-token ERM heads ({' '.join(flags)})")


if __name__ == "__main__":
    main()
