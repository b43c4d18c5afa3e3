"""DAP losses (SEA paper Eq. 8) against hand-computed values; derivations in each docstring.

Shared batch of 3 pairs (summed sequence log-probs):
    pi_chosen = (−1, −2, −5), ref_chosen = (−2, −3, −3)  -> chosen log-ratios   (1, 1, −2)
    pi_rejected = (−3, −4, −1), ref_rejected = (−3, −5, −1) -> rejected log-ratios (0, 1, 0)
    h = chosen − rejected = (1, 0, −2)
"""

from __future__ import annotations

import math

import pytest
import torch

from sealign.errors import SealignError
from sealign.losses import (
    DEFAULT_BETA,
    LOSSES,
    dpo,
    expected_loss,
    get_loss,
    implicit_rewards,
    ipo,
    masked_mean,
    resolve_beta,
    simpo,
    slic,
)


def batch(requires_grad: bool = False) -> tuple[torch.Tensor, ...]:
    """(pi_chosen, pi_rejected, ref_chosen, ref_rejected), each (3,), with h = (1, 0, −2)."""
    pi_c = torch.tensor([-1.0, -2.0, -5.0], requires_grad=requires_grad)
    pi_r = torch.tensor([-3.0, -4.0, -1.0], requires_grad=requires_grad)
    return pi_c, pi_r, torch.tensor([-2.0, -3.0, -3.0]), torch.tensor([-3.0, -5.0, -1.0])


def test_dpo_hand_worked():
    """β = 0.1, h = (1, 0, −2): −log σ(βh) = log(1 + e^−βh)
    = log(1 + e^−0.1) = 0.644397, log 2 = 0.693147, log(1 + e^0.2) = 0.798139 (h < 0 costs more)."""
    loss = dpo(*batch(), beta=0.1)
    assert loss.shape == (3,)
    assert loss.tolist() == pytest.approx([0.644397, 0.693147, 0.798139], abs=1e-6)


def test_dpo_label_smoothing():
    """ε = 0.1, β = 0.1, h = 1: 0.9·log(1 + e^−0.1) + 0.1·log(1 + e^0.1);
    log(1 + e^0.1) = log(1 + e^−0.1) + 0.1, so the total is 0.644397 + 0.1·0.1 = 0.654397."""
    loss = dpo(*batch(), beta=0.1, label_smoothing=0.1)
    assert loss[0].item() == pytest.approx(0.654397, abs=1e-6)
    assert dpo(*batch(), beta=0.1, label_smoothing=0.0).tolist() == dpo(*batch(), beta=0.1).tolist()


def test_expected_loss_is_conservative_dpo_and_weighs_both_orders():
    """E_z F for p = 0.9 is DPO with ε = 0.1 (0.654397 at h = 1, as above). IPO, β = 0.5, h = (1, 0, −2):
    forward (0, 1, 9), swapped (−h − 1)² = (4, 1, 1); p = (1, 0.5, 0) gives (0, 1, 1). SimPO swaps the
    lengths with the responses: p = 0 is SimPO on the reversed pair."""
    p = torch.tensor([0.9, 0.9, 0.9])
    assert expected_loss(dpo, p, *batch(), beta=0.1).tolist() == pytest.approx(dpo(*batch(), beta=0.1, label_smoothing=0.1).tolist())
    assert expected_loss(ipo, torch.tensor([1.0, 0.5, 0.0]), *batch(), beta=0.5).tolist() == pytest.approx([0.0, 1.0, 1.0])
    assert expected_loss(slic, torch.ones(3), *batch(), beta=0.2).tolist() == slic(*batch(), beta=0.2).tolist()  # sure labels
    pi_c, pi_r, ref_c, ref_r = batch()
    n_c, n_r = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([2.0, 1.0, 1.0])
    reversed_pair = simpo(pi_r, pi_c, ref_r, ref_c, beta=2.0, chosen_lengths=n_r, rejected_lengths=n_c)
    soft = expected_loss(simpo, torch.zeros(3), pi_c, pi_r, ref_c, ref_r, beta=2.0, chosen_lengths=n_c, rejected_lengths=n_r)
    assert soft.tolist() == pytest.approx(reversed_pair.tolist())


def test_ipo_hand_worked():
    """β = 0.5: target 1/(2β) = 1; h = (1, 0, −2) -> (1 − 1)², (0 − 1)², (−2 − 1)² = (0, 1, 9)."""
    assert ipo(*batch(), beta=0.5).tolist() == pytest.approx([0.0, 1.0, 9.0])


def test_ipo_per_token_average():
    """pi_c = −4, ref_c = −6 over 2 tokens; pi_r = −6, ref_r = −3 over 3 tokens; β = 0.5 (target 1).
    Summed (default): h = (−4 + 6) − (−6 + 3) = 5 -> (5 − 1)² = 16.
    Averaged: h = (−2 + 3) − (−2 + 1) = 2 -> (2 − 1)² = 1."""
    args = (torch.tensor([-4.0]), torch.tensor([-6.0]), torch.tensor([-6.0]), torch.tensor([-3.0]))
    lengths = {"chosen_lengths": torch.tensor([2.0]), "rejected_lengths": torch.tensor([3.0])}
    assert ipo(*args, beta=0.5, **lengths).item() == pytest.approx(16.0)
    assert ipo(*args, beta=0.5, average_log_probs=True, **lengths).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="chosen_lengths"):
        ipo(*args, beta=0.5, average_log_probs=True)


def test_slic_hand_worked_and_hinge():
    """β = 0.2: 1 − βh for h = (1, 0, −2) = (0.8, 1, 1.4).
    Past the margin: h = 10 -> max(0, 1 − 2) = 0, and h = 5 -> max(0, 0) = 0, both with zero gradient."""
    assert slic(*batch(), beta=0.2).tolist() == pytest.approx([0.8, 1.0, 1.4])
    pi_c = torch.tensor([0.0, 0.0], requires_grad=True)
    loss = slic(pi_c, torch.tensor([-10.0, -5.0]), torch.zeros(2), torch.zeros(2), beta=0.2)
    assert loss.tolist() == [0.0, 0.0]
    loss.sum().backward()
    assert pi_c.grad.tolist() == [0.0, 0.0]


def test_simpo_hand_worked_ignores_reference():
    """β = 2, γ = 0.5; lengths (2, 2) chosen, (3, 3) rejected.
    Pair 0: pi_c/2 = −4/2 = −2, pi_r/3 = −9/3 = −3 -> 2·1 − 0.5 = 1.5 -> log(1 + e^−1.5) = 0.201413.
    Pair 1: −6/2 = −3, −3/3 = −1 -> 2·(−2) − 0.5 = −4.5 -> log(1 + e^4.5) = 4.511048.
    Any ref_* gives the same loss."""
    pi_c, pi_r = torch.tensor([-4.0, -6.0]), torch.tensor([-9.0, -3.0])
    lengths = {"chosen_lengths": torch.tensor([2.0, 2.0]), "rejected_lengths": torch.tensor([3.0, 3.0])}
    loss = simpo(pi_c, pi_r, torch.zeros(2), torch.zeros(2), beta=2.0, **lengths)
    assert loss.tolist() == pytest.approx([0.201413, 4.511048], abs=1e-6)
    other_ref = simpo(pi_c, pi_r, torch.tensor([7.0, -30.0]), torch.tensor([-1.0, 4.0]), beta=2.0, **lengths)
    assert torch.equal(loss, other_ref)
    no_margin = simpo(pi_c, pi_r, torch.zeros(2), torch.zeros(2), beta=2.0, gamma_margin=0.0, **lengths)
    assert no_margin[0].item() == pytest.approx(math.log1p(math.exp(-2.0)))  # γ = 0: 2·1 -> log(1 + e^−2)


def test_simpo_requires_lengths():
    with pytest.raises(ValueError, match="simpo needs chosen_lengths and rejected_lengths"):
        simpo(*batch(), beta=2.0)
    with pytest.raises(ValueError, match="simpo needs"):
        simpo(*batch(), beta=2.0, chosen_lengths=torch.ones(3))


@pytest.mark.parametrize("name, beta", [("dpo", 0.1), ("ipo", 0.1), ("slic", 0.2)])
def test_gradient_signs(name, beta):
    """Raising log π(y+) lowers the loss, raising log π(y−) raises it, wherever the loss is still active:
    DPO everywhere; IPO for h < 1/(2β) = 5; SLiC for βh < 1 (h = (1, 0, −2) meets all three)."""
    pi_c, pi_r, ref_c, ref_r = batch(requires_grad=True)
    LOSSES[name](pi_c, pi_r, ref_c, ref_r, beta=beta).sum().backward()
    assert (pi_c.grad < 0).all() and (pi_r.grad > 0).all()


def test_dpo_gradient_value():
    """d/d pi_c of −log σ(βh) = −β·σ(−βh); at h = 0 that is −0.1 · 0.5 = −0.05, and +0.05 for pi_r."""
    pi_c, pi_r, ref_c, ref_r = batch(requires_grad=True)
    dpo(pi_c, pi_r, ref_c, ref_r, beta=0.1).sum().backward()
    assert pi_c.grad[1].item() == pytest.approx(-0.05)
    assert pi_r.grad[1].item() == pytest.approx(0.05)


def test_masked_mean_excludes_invalid_pairs():
    """losses = (1, 2, 4), valid = (T, F, T): mean = (1 + 4) / 2 = 2.5; gradient (0.5, 0, 0.5)."""
    losses = torch.tensor([1.0, 2.0, 4.0], requires_grad=True)
    out = masked_mean(losses, torch.tensor([True, False, True]))
    assert out.item() == pytest.approx(2.5)
    out.backward()
    assert losses.grad.tolist() == [0.5, 0.0, 0.5]


def test_masked_identical_pair_gets_no_gradient_through_dpo():
    """Pair 1 masked (as if its two responses were identical): its log-probs get exactly zero gradient."""
    pi_c, pi_r, ref_c, ref_r = batch(requires_grad=True)
    masked_mean(dpo(pi_c, pi_r, ref_c, ref_r, beta=0.1), torch.tensor([True, False, True])).backward()
    assert pi_c.grad[1].item() == 0.0 and pi_r.grad[1].item() == 0.0
    assert pi_c.grad[0].item() != 0.0 and pi_c.grad[2].item() != 0.0


def test_masked_mean_all_invalid_backward_works():
    """No valid pair: the mean is 0, still attached to the graph, and every gradient is 0."""
    losses = torch.tensor([1.0, 2.0], requires_grad=True)
    out = masked_mean(losses, torch.tensor([False, False]))
    assert out.item() == 0.0 and out.grad_fn is not None
    out.backward()
    assert losses.grad.tolist() == [0.0, 0.0]


def test_get_loss_registry():
    assert sorted(LOSSES) == ["dpo", "ipo", "simpo", "slic"] == sorted(DEFAULT_BETA)
    assert get_loss("dpo") is dpo
    with pytest.raises(SealignError, match=r"unknown loss 'x' \(known: dpo, ipo, simpo, slic\)"):
        get_loss("x")


def test_resolve_beta_defaults_and_errors():
    """SEA paper §5.2: β = 0.1 for DPO, 0.2 for SLiC; IPO's is tuned in {0.2, 0.3, 0.5, 1.0}, so required."""
    assert resolve_beta("dpo", None) == 0.1
    assert resolve_beta("slic", None) == 0.2
    assert resolve_beta("simpo", None) == 2.0
    assert resolve_beta("ipo", 0.3) == 0.3
    with pytest.raises(SealignError, match=r"--beta is required for ipo \(the paper tunes it in \{0.2, 0.3, 0.5, 1.0\}"):
        resolve_beta("ipo", None)
    for bad in (0.0, -0.1):
        with pytest.raises(SealignError, match="must be > 0"):
            resolve_beta("dpo", bad)
    with pytest.raises(SealignError, match="unknown loss"):
        resolve_beta("nope", 0.1)


def test_implicit_rewards_values_and_detached():
    """β = 0.1: chosen = 0.1·(1, 1, −2) = (0.1, 0.1, −0.2); rejected = 0.1·(0, 1, 0) = (0, 0.1, 0);
    margin = (0.1, 0, −0.2) = β·h."""
    pi_c, pi_r, ref_c, ref_r = batch(requires_grad=True)
    r = implicit_rewards(pi_c, pi_r, ref_c, ref_r, beta=0.1)
    assert r["chosen_reward"].tolist() == pytest.approx([0.1, 0.1, -0.2])
    assert r["rejected_reward"].tolist() == pytest.approx([0.0, 0.1, 0.0])
    assert r["margin"].tolist() == pytest.approx([0.1, 0.0, -0.2])
    assert all(not t.requires_grad and t.grad_fn is None for t in r.values())
