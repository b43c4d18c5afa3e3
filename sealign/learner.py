"""The Learner role (paper §5.1): one DAP gradient step per batch of preferences (Eq. 8)."""

from __future__ import annotations

import copy
import functools
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel, get_scheduler
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from sealign.errors import SealignError
from sealign.losses import expected_loss, get_loss, implicit_rewards, masked_mean
from sealign.policy import sequence_logprobs
from sealign.records import Preferences
from sealign.rollback import RollbackGuard, Snapshot


@dataclass
class LearnerConfig:
    loss: str
    beta: float
    lr: float
    lr_schedule: str
    warmup_steps: int
    total_steps: int
    max_grad_norm: float = 1.0
    rollback_kl: float | None = None  # nats: a step's KL above it returns to an earlier state (`sealign.rollback`)
    rollback_kl_ratio: float | None = None  # with it the threshold is at least this x the recent median KL
    loss_kwargs: dict | None = None
    optimism: float = 0.0  # XPO's alpha: weight of the mean log pi_theta of pi_ref's responses
    micro_batch_size: int | None = None  # pairs per forward/backward; None: the whole batch at once
    gradient_checkpointing: bool = False  # recompute each layer's activations in backward


def optimism_term(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], responses: list[str]) -> torch.Tensor:
    """XPO's exploration bonus before its weight: mean over the batch of log pi_theta(y~ | x), y~ ~ pi_ref."""
    logp, _ = sequence_logprobs(model, tokenizer, prompts, responses)  # (B,)
    return logp.mean()


def micro_steps(pairs: int, references: int, size: int | None) -> list[tuple[slice | None, slice | None]]:
    """What each forward/backward covers: (pairs, XPO's reference samples), either possibly None.

    None: all of both in one. Else `size` pairs per step, then 2 * `size` reference samples (one
    sequence each, so as many sequences as a step of pairs); the last step of each may be smaller."""
    if size is None:
        return [(slice(0, pairs), slice(0, references) if references else None)]
    return [(part, None) for part in _slices(pairs, size)] + [(None, part) for part in _slices(references, 2 * size)]


def _slices(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def valid_share(valid_part: torch.Tensor, valid_all: torch.Tensor) -> torch.Tensor:
    """Weight of a micro-batch's `masked_mean` in the batch's: its valid pairs over all valid
    pairs (each at least 1, as in `masked_mean`), so the weighted means add up to the batch's mean
    and so do their gradients; exactly 1 for the whole batch. Both (B_part,), (B,) bool."""
    return valid_part.sum().clamp(min=1) / valid_all.sum().clamp(min=1)


def checkpointable_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks (decoder layers) that transformers marks as checkpointable."""
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        raise SealignError(f"--gradient-checkpointing: {type(model).__name__} has no layers transformers can checkpoint")
    return layers


@contextmanager
def recomputed(layers: list[torch.nn.Module]) -> Iterator[None]:
    """Within, each layer keeps only its inputs for backward and recomputes the rest there.

    transformers' own switch (`gradient_checkpointing_enable`) acts in train mode only, and the
    learner stays in eval mode to keep dropout off; so the layers' forwards are wrapped here."""
    for layer in layers:
        layer.forward = functools.partial(checkpoint, layer.forward, use_reentrant=False)  # shadows the class's
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


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
        self.checkpointed = checkpointable_layers(model) if cfg.gradient_checkpointing else []
        self.steps = 0
        self.guard = RollbackGuard(cfg.rollback_kl, cfg.rollback_kl_ratio) if cfg.rollback_kl is not None else None
        if self.guard is not None:
            self.guard.keep(self._snapshot())

    def step(self, batch: Preferences, reference_samples: tuple[list[str], list[str]] | None = None) -> dict[str, float]:
        """Minimise the masked mean DAP loss on `batch`; returns detached diagnostics.

        With `reference_samples` (prompts, responses sampled from pi_ref) and `optimism` alpha > 0,
        the loss gains XPO's term (Xie et al. 2024, Alg. 1): alpha * mean log pi_theta(y~ | x).
        Minimising it lowers the likelihood of what pi_ref would say, pushing the policy to
        explore beyond pi_ref's support; its batch mean keeps alpha on the DPO loss's scale.

        With `micro_batch_size`, the pairs (and the reference samples) go through the model a few
        at a time, each part's loss weighted by its share of the batch's mean, and their gradients
        accumulate into one clipped optimizer step: the gradient of the whole batch's loss."""
        n, valid = len(batch), batch.valid
        samples = reference_samples if reference_samples is not None and self.cfg.optimism > 0 else None
        self.optimizer.zero_grad(set_to_none=True)
        parts, losses, optimisms = [], [], []
        with recomputed(self.checkpointed):
            for pairs, refs in micro_steps(n, len(samples[0]) if samples else 0, self.cfg.micro_batch_size):
                loss = 0.0
                if pairs is not None:
                    logps, loss = self._pair_loss(batch, pairs, valid)
                    parts.append(logps)
                if refs is not None:  # XPO: this part's share of the mean log pi_theta(y~ | x)
                    prompts, responses = samples[0][refs], samples[1][refs]
                    optimism = optimism_term(self.model, self.tokenizer, prompts, responses) * (len(prompts) / len(samples[0]))
                    loss = loss + self.cfg.optimism * optimism
                    optimisms.append(optimism.detach())
                if not math.isfinite(loss.item()):
                    raise NonFiniteLoss(f"non-finite {self.cfg.loss} loss at learner step {self.steps + 1}")
                loss.backward()
                losses.append(loss.detach())
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        if not math.isfinite(grad_norm.item()):  # stop before the weights are spoiled
            raise NonFiniteLoss(f"non-finite gradient at learner step {self.steps + 1}")
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
        self.optimizer.step()
        self.scheduler.step()
        self.steps += 1
        logps = [torch.cat(x) for x in zip(*parts)]  # pi chosen, pi rejected, ref chosen, ref rejected: (B,) each
        out = self._diagnostics(*logps, valid, sum(losses), grad_norm, lr, sum(optimisms) if optimisms else None)
        if self.guard is not None:
            out.update(self._guard(out["kl"]))
        return out

    def _guard(self, kl: float) -> dict[str, float]:
        """The rollback guard after a step whose KL was `kl`: return to its snapshot at half the
        rate (the schedule's shape kept: its base rates halve with the optimizer's current one), or
        keep a snapshot on its schedule. `rolled_back` tells the loop to resync the actors."""
        back = self.guard.target(kl)
        if back is not None:
            with torch.no_grad():
                for name, p in self._trainable():
                    p.copy_(back.weights[name])
            # a copy: torch's optimizer adopts the tensors it loads and updates them in place, and the
            # snapshot must stay as it was for the next return to it; its rate is the snapshot's: set below
            self.optimizer.load_state_dict(copy.deepcopy(back.optimizer))
            self.scheduler.base_lrs = [lr / 2 for lr in self.scheduler.base_lrs]
            for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
                group["lr"] = lr / 2
            self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]  # what get_last_lr() tells
        elif self.guard.wants_snapshot(self.steps):
            self.guard.keep(self._snapshot())
        # the loop averages figures: lr_scale is 2^-rollbacks; kl_limit the threshold the next step must pass
        return {"rolled_back": float(back is not None), "lr_scale": self.guard.scale, "kl_limit": self.guard.limit()}

    def _trainable(self) -> list[tuple[str, torch.Tensor]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def _snapshot(self) -> Snapshot:
        """The trainable weights and the optimizer's state now, copied to the CPU."""
        weights = {n: p.detach().to("cpu", copy=True) for n, p in self._trainable()}
        saved = self.optimizer.state_dict()  # references to the live state: copied here
        moments = {i: {k: v.to("cpu", copy=True) if torch.is_tensor(v) else v for k, v in s.items()} for i, s in saved["state"].items()}
        return Snapshot(self.steps, weights, {"state": moments, "param_groups": copy.deepcopy(saved["param_groups"])})

    def _pair_loss(self, batch: Preferences, pairs: slice, valid: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """The detached log pi_theta and log pi_ref of the chosen and rejected responses of the
        pairs in `pairs` (each (b,)), and their masked mean loss weighted by its share of the batch's."""
        prompts = batch.prompts[pairs] * 2
        responses = batch.chosen[pairs] + batch.rejected[pairs]
        with torch.no_grad():
            ref_logp, _ = sequence_logprobs(self.ref, self.tokenizer, prompts, responses)  # (2b,)
        pi_logp, lengths = sequence_logprobs(self.model, self.tokenizer, prompts, responses)  # (2b,)
        b = len(prompts) // 2
        pi_c, pi_r, ref_c, ref_r = pi_logp[:b], pi_logp[b:], ref_logp[:b], ref_logp[b:]
        extra = dict(self.cfg.loss_kwargs or {})
        if self.cfg.loss == "simpo":
            extra.update(chosen_lengths=lengths[:b].float(), rejected_lengths=lengths[b:].float())
        part = valid[pairs].to(pi_logp.device)
        if batch.confidence is None:
            per_pair = self.loss_fn(pi_c, pi_r, ref_c, ref_r, self.cfg.beta, **extra)
        else:  # soft labels: the loss expected under each label's probability
            p = torch.tensor(batch.confidence[pairs], dtype=pi_logp.dtype, device=pi_logp.device)
            per_pair = expected_loss(self.loss_fn, p, pi_c, pi_r, ref_c, ref_r, self.cfg.beta, **extra)
        loss = masked_mean(per_pair, part)
        return (pi_c.detach(), pi_r.detach(), ref_c, ref_r), loss * valid_share(part, valid).to(loss.device)

    def _diagnostics(
        self, pi_c: torch.Tensor, pi_r: torch.Tensor, ref_c: torch.Tensor, ref_r: torch.Tensor, valid: torch.Tensor,
        loss: torch.Tensor, grad_norm: torch.Tensor, lr: float, optimism: torch.Tensor | None,
    ) -> dict[str, float]:  # fmt: skip
        """The step's figures from the log-probs of the chosen and rejected responses (each (B,))."""
        rewards = implicit_rewards(pi_c, pi_r, ref_c, ref_r, self.cfg.beta)
        pi_logp, ref_logp = torch.cat([pi_c, pi_r]), torch.cat([ref_c, ref_r])  # (2B,)
        v = valid.float().to(pi_logp.device)
        denom = max(v.sum().item(), 1.0)
        return {
            "loss": loss.item(),
            "chosen_reward": (rewards["chosen_reward"] * v).sum().item() / denom,
            "rejected_reward": (rewards["rejected_reward"] * v).sum().item() / denom,
            "margin": (rewards["margin"] * v).sum().item() / denom,
            # Monte Carlo KL(pi_theta || pi_ref) on responses the actor sampled: mean log-ratio per sequence
            "kl": (pi_logp - ref_logp).mean().item(),
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
            # the snapshots as they are, not copied (asdict would): the checkpoint writes them out at once
            "guard": None if self.guard is None else {**vars(self.guard), "snapshots": [vars(x) for x in self.guard.snapshots]},
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.steps = state["steps"]
        if self.guard is not None:
            saved = state["guard"]
            self.guard = RollbackGuard(**{**saved, "snapshots": [Snapshot(**x) for x in saved["snapshots"]]})
