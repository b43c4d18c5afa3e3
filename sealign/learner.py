"""The Learner role (paper §5.1): one DAP gradient step per batch of preferences (Eq. 8)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, get_scheduler
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from sealign.losses import get_loss, implicit_rewards, masked_mean
from sealign.policy import sequence_logprobs
from sealign.records import Preferences


@dataclass
class LearnerConfig:
    loss: str
    beta: float
    lr: float
    lr_schedule: str
    warmup_steps: int
    total_steps: int
    max_grad_norm: float = 1.0
    loss_kwargs: dict | None = None
    optimism: float = 0.0  # XPO's alpha: weight of the mean log pi_theta of pi_ref's responses


def optimism_term(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], responses: list[str]) -> torch.Tensor:
    """XPO's exploration bonus before its weight: mean over the batch of log pi_theta(y~ | x), y~ ~ pi_ref."""
    logp, _ = sequence_logprobs(model, tokenizer, prompts, responses)  # (B,)
    return logp.mean()


class NonFiniteLoss(RuntimeError):
    """The loss diverged; the run stops and keeps its last good checkpoint."""


class Learner:
    """Holds pi_theta (trained), pi_ref (frozen copy), the optimizer and the schedule."""

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cfg: LearnerConfig, ref: PreTrainedModel | None = None
    ):
        self.model = model.eval()  # dropout off: the DAP loss compares deterministic log-probs
        # pi_ref: a given reference (--ref), else a frozen copy of the initial policy
        self.ref = (ref if ref is not None else copy.deepcopy(model)).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.loss_fn = get_loss(cfg.loss)
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
        self.scheduler = get_scheduler(cfg.lr_schedule, self.optimizer, cfg.warmup_steps, cfg.total_steps)
        self.steps = 0

    def step(self, batch: Preferences, reference_samples: tuple[list[str], list[str]] | None = None) -> dict[str, float]:
        """Minimise the masked mean DAP loss on `batch`; returns detached diagnostics.

        With `reference_samples` (prompts, responses sampled from pi_ref) and `optimism` alpha > 0,
        the loss gains XPO's term (Xie et al. 2024, Alg. 1): alpha * mean log pi_theta(y~ | x).
        Minimising it lowers the likelihood of what pi_ref would say, pushing the policy to
        explore beyond pi_ref's support; its batch mean keeps alpha on the DPO loss's scale."""
        prompts = batch.prompts * 2
        responses = batch.chosen + batch.rejected
        with torch.no_grad():
            ref_logp, _ = sequence_logprobs(self.ref, self.tokenizer, prompts, responses)  # (2B,)
        pi_logp, lengths = sequence_logprobs(self.model, self.tokenizer, prompts, responses)  # (2B,)
        n = len(batch)
        pi_c, pi_r, ref_c, ref_r = pi_logp[:n], pi_logp[n:], ref_logp[:n], ref_logp[n:]
        extra = dict(self.cfg.loss_kwargs or {})
        if self.cfg.loss == "simpo":
            extra.update(chosen_lengths=lengths[:n].float(), rejected_lengths=lengths[n:].float())
        valid = batch.valid
        loss = masked_mean(self.loss_fn(pi_c, pi_r, ref_c, ref_r, self.cfg.beta, **extra), valid)
        optimism = None
        if reference_samples is not None and self.cfg.optimism > 0:
            optimism = optimism_term(self.model, self.tokenizer, *reference_samples)
            loss = loss + self.cfg.optimism * optimism
        if not math.isfinite(loss.item()):
            raise NonFiniteLoss(f"non-finite {self.cfg.loss} loss at learner step {self.steps + 1}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        if not math.isfinite(grad_norm.item()):  # stop before the weights are spoiled
            raise NonFiniteLoss(f"non-finite gradient at learner step {self.steps + 1}")
        lr = self.scheduler.get_last_lr()[0]  # the rate this step uses
        self.optimizer.step()
        self.scheduler.step()
        self.steps += 1
        rewards = implicit_rewards(pi_c, pi_r, ref_c, ref_r, self.cfg.beta)
        v = valid.float()
        denom = max(v.sum().item(), 1.0)
        return {
            "loss": loss.item(),
            "chosen_reward": (rewards["chosen_reward"] * v).sum().item() / denom,
            "rejected_reward": (rewards["rejected_reward"] * v).sum().item() / denom,
            "margin": (rewards["margin"] * v).sum().item() / denom,
            # Monte Carlo KL(pi_theta || pi_ref) on responses the actor sampled: mean log-ratio per sequence
            "kl": (pi_logp - ref_logp).detach().mean().item(),
            "grad_norm": float(grad_norm),
            "lr": lr,
            "valid_pairs": int(v.sum().item()),
            **({"optimism_logp": optimism.item()} if optimism is not None else {}),
        }

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.steps = state["steps"]
