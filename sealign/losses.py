"""Direct alignment from preferences (DAP): the per-pair loss F inside L_pi, SEA paper Eq. 8.

Every loss takes summed sequence log-probs of shape (B,) and returns per-pair losses (B,);
reduction (``masked_mean``) happens in the learner, as in torchtune.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from sealign.errors import SealignError

LossFn = Callable[..., Tensor]


def _margin(pi_chosen: Tensor, pi_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor) -> Tensor:
    """h = log π(y+)/π_ref(y+) − log π(y−)/π_ref(y−): the log-ratio margin every DAP loss scores."""
    return (pi_chosen - ref_chosen) - (pi_rejected - ref_rejected)  # (B,)


def _lengths(loss: str, chosen_lengths: Tensor | None, rejected_lengths: Tensor | None) -> tuple[Tensor, Tensor]:
    """Token counts for length-normalized log-probs; a missing one is a caller bug, so fail loudly."""
    if chosen_lengths is None or rejected_lengths is None:
        raise ValueError(f"{loss} needs chosen_lengths and rejected_lengths (token counts, shape (B,))")
    return chosen_lengths, rejected_lengths


def dpo(
    pi_chosen: Tensor,
    pi_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> Tensor:
    """−log σ(βh) (Rafailov et al. 2023, Eq. 7); ε > 0 gives conservative DPO, robust to flipped labels."""
    logits = beta * _margin(pi_chosen, pi_rejected, ref_chosen, ref_rejected)  # (B,)
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def ipo(
    pi_chosen: Tensor,
    pi_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
    average_log_probs: bool = False,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
) -> Tensor:
    """(h − 1/(2β))² (Azar et al. 2024): regresses the margin to a finite target instead of +∞.

    Summed log-probs by default, as in the paper; ``average_log_probs`` divides each by its token count.
    """
    if average_log_probs:
        n_c, n_r = _lengths("ipo with average_log_probs", chosen_lengths, rejected_lengths)
        pi_chosen, ref_chosen = pi_chosen / n_c, ref_chosen / n_c
        pi_rejected, ref_rejected = pi_rejected / n_r, ref_rejected / n_r
    h = _margin(pi_chosen, pi_rejected, ref_chosen, ref_rejected)  # (B,)
    return (h - 1 / (2 * beta)) ** 2


def slic(pi_chosen: Tensor, pi_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, beta: float) -> Tensor:
    """max(0, 1 − βh): SLiC-HF's calibration hinge (Zhao et al. 2023); no gradient once the margin is met."""
    return torch.relu(1 - beta * _margin(pi_chosen, pi_rejected, ref_chosen, ref_rejected))


def simpo(
    pi_chosen: Tensor,
    pi_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    gamma_margin: float = 0.5,
) -> Tensor:
    """−log σ(β(log π(y+)/|y+| − log π(y−)/|y−|) − γ) (Meng et al. 2024): reference-free, ref_* ignored.

    γ is absolute (subtracted after the β scaling). 0.5 is TRL's and LLaMA-Factory's ``simpo_gamma`` default;
    Meng et al. tune γ/β per model (0.5 for Llama-3-8B-Base at β = 2.0); ours, 0.25 at β = 2.0, is gentler.
    """
    n_c, n_r = _lengths("simpo", chosen_lengths, rejected_lengths)
    logits = beta * (pi_chosen / n_c - pi_rejected / n_r) - gamma_margin  # (B,)
    return -F.logsigmoid(logits)


def expected_loss(
    loss_fn: LossFn,
    p: Tensor,
    pi_chosen: Tensor,
    pi_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    **kwargs,
) -> Tensor:
    """E_{z ~ Bernoulli(p)} F = p F(y+, y−) + (1 − p) F(y−, y+): a DAP loss when the label itself is
    uncertain, as an ERM's label is (beyond the paper: §4.3's B_ERM with the ensemble's preference
    probability p (B,) instead of a hard label). For DPO it is conservative DPO with ε = 1 − p."""
    lengths = {} if chosen_lengths is None else {"chosen_lengths": chosen_lengths, "rejected_lengths": rejected_lengths}
    swapped = {} if chosen_lengths is None else {"chosen_lengths": rejected_lengths, "rejected_lengths": chosen_lengths}
    forward = loss_fn(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta, **lengths, **kwargs)
    backward = loss_fn(pi_rejected, pi_chosen, ref_rejected, ref_chosen, beta, **swapped, **kwargs)
    return p * forward + (1 - p) * backward


LOSSES: dict[str, LossFn] = {"dpo": dpo, "ipo": ipo, "simpo": simpo, "slic": slic}

# SEA paper §5.2: β = 0.1 (DPO) and 0.2 (SLiC) are robust at all scales; IPO's β is tuned per scale.
DEFAULT_BETA: dict[str, float | None] = {"dpo": 0.1, "ipo": None, "simpo": 2.0, "slic": 0.2}


def get_loss(name: str) -> LossFn:
    """The DAP loss F of Eq. 8 by name, so configs can name it and fail early on a typo."""
    if name not in LOSSES:
        raise SealignError(f"unknown loss {name!r} (known: {', '.join(sorted(LOSSES))})")
    return LOSSES[name]


def resolve_beta(loss: str, beta: float | None) -> float:
    """The β to train with: the user's, else the paper's default for this loss."""
    get_loss(loss)
    if beta is None:
        beta = DEFAULT_BETA[loss]
        if beta is None:
            raise SealignError(f"--beta is required for {loss} (the paper tunes it in {{0.2, 0.3, 0.5, 1.0}})")
    if beta <= 0:
        raise SealignError(f"--beta must be > 0, got {beta}")
    return float(beta)


def masked_mean(losses: Tensor, valid: Tensor) -> Tensor:
    """Mean over valid pairs; a pair of identical responses carries no preference, so no gradient.

    All-invalid gives a zero still connected to ``losses``, so ``backward()`` works.
    """
    kept = torch.where(valid, losses, torch.zeros_like(losses))  # (B,), zero gradient where ~valid
    return kept.sum() / valid.sum().clamp(min=1)


def implicit_rewards(
    pi_chosen: Tensor, pi_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, beta: float
) -> dict[str, Tensor]:
    """DPO's implicit reward β log π/π_ref (Rafailov et al. 2023, Eq. 5), detached, for logging."""
    chosen = beta * (pi_chosen - ref_chosen).detach()  # (B,)
    rejected = beta * (pi_rejected - ref_rejected).detach()  # (B,)
    return {"chosen_reward": chosen, "rejected_reward": rejected, "margin": chosen - rejected}
