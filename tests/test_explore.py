"""Duel selection rules on hand-built reward tensors (K heads, P prompts, M candidates)."""

from __future__ import annotations

import math

import pytest
import torch

from sealign.explore import (
    RULES,
    apl_select,
    bai_ts,
    best_worst_ts,
    ee_ts,
    ensemble_preference,
    erm_labelled_pairs,
    logit_variance,
    passive,
    policy_vs_reference,
    predictive_entropy,
    preference_variance,
    uncertainty,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_passive_picks_two_distinct_allowed_candidates():
    rewards = torch.zeros(0, 500, 4)
    mask = torch.tensor([[True, False, True, True]]).expand(500, -1)
    choice = passive(rewards, gen(), mask)
    assert (choice.first != choice.second).all() and not choice.clashed.any()
    picked = torch.cat([choice.first, choice.second])
    assert set(picked.tolist()) == {0, 2, 3}  # never the repeated candidate 1
    # uniform: each allowed candidate is first about a third of the time
    counts = torch.bincount(choice.first, minlength=4).double() / 500
    assert counts[1] == 0 and ((counts[[0, 2, 3]] - 1 / 3).abs() < 0.08).all()


def test_all_rules_agree_when_every_head_agrees_on_one_clear_best():
    # every head: candidate 2 best, candidate 0 second best -> E&E and the clash rule both give (2, 0)
    rewards = torch.tensor([[[1.0, 0.0, 3.0, -1.0]]]).repeat(5, 1, 1)  # (K=5, P=1, M=4)
    choice = ee_ts(rewards, gen())
    assert (choice.first.item(), choice.second.item()) == (2, 0)
    assert choice.clashed.item()  # all heads agreed on the argmax: a clash, resolved by the mean


def test_random_clash_draws_a_uniform_other_candidate():
    # every head agrees on candidate 2: by default the clash asks about the mean's second best
    # (0); with random_clash any other allowed candidate, uniformly, never the first or a repeat
    rewards = torch.tensor([[[1.0, 0.0, 3.0, -1.0, 0.5]]]).repeat(5, 400, 1)  # (K=5, P=400, M=5)
    mask = torch.tensor([[True, True, True, True, False]]).expand(400, -1)
    for rule in (ee_ts, bai_ts):
        assert rule(rewards, gen(), mask).second.tolist() == [0] * 400
        c = rule(rewards, gen(), mask, random_clash=True)
        assert (c.first == 2).all() and c.clashed.all()
        share = torch.bincount(c.second, minlength=5).double() / 400
        assert share[2] == 0 and share[4] == 0 and ((share[[0, 1, 3]] - 1 / 3).abs() < 0.08).all()


def test_ee_ts_second_is_argmax_of_another_head():
    # head 0 prefers candidate 0, head 1 prefers candidate 1: the two picks are those argmaxes
    rewards = torch.tensor([[[2.0, 1.0, 0.0]], [[1.0, 2.0, 0.0]]])  # (K=2, P=1, M=3)
    seen = set()
    for seed in range(20):
        c = ee_ts(rewards, gen(seed), max_tries=60)  # P(every try re-draws the first head) = 2^-60
        assert {c.first.item(), c.second.item()} == {0, 1} and not c.clashed.item()
        seen.add(c.first.item())
    assert seen == {0, 1}  # the first pick follows the sampled head


def test_best_worst_ts_asks_about_one_sampled_heads_best_against_its_worst():
    # head 0 ranks 0 > 1 > 2 > 3, head 1 ranks 3 > 2 > 1 > 0: the duel is (0, 3) or (3, 0), and
    # it follows the sampled head, never mixing the two heads' ends
    rewards = torch.tensor([[[3.0, 2.0, 1.0, 0.0]], [[0.0, 1.0, 2.0, 3.0]]])  # (K=2, P=1, M=4)
    seen = set()
    for seed in range(20):
        c = best_worst_ts(rewards, gen(seed))
        seen.add((c.first.item(), c.second.item()))
        assert not c.clashed.item()
    assert seen == {(0, 3), (3, 0)}
    # a repeated candidate is never picked: with candidate 3 masked out, head 0's worst is 2
    mask = torch.tensor([[True, True, True, False]])
    c = best_worst_ts(rewards[:1], gen(), mask)
    assert (c.first.item(), c.second.item()) == (0, 2)


def test_best_worst_ts_without_a_second_distinct_candidate_is_a_clash():
    rewards = torch.tensor([[[1.0, 5.0, -2.0]]]).repeat(3, 1, 1)
    c = best_worst_ts(rewards, gen(), torch.tensor([[True, False, False]]))
    assert c.first.item() == c.second.item() == 0 and c.clashed.item()


def test_preference_variance_by_hand():
    # two heads; first = candidate 0. For b = 1: sigma(1 - 0) and sigma(-1 - 0) -> variance of
    # {0.7311, 0.2689} = 0.0535; for b = 0 itself the variance is 0.
    rewards = torch.tensor([[[1.0, 0.0]], [[-1.0, 0.0]]])
    var = preference_variance(rewards, torch.tensor([0]))
    s = 1 / (1 + math.exp(-1))
    assert var[0, 0].item() == pytest.approx(0.0)
    assert var[0, 1].item() == pytest.approx((s - 0.5) ** 2, abs=1e-6)


def test_bai_ts_second_maximises_preference_variance():
    # both heads agree candidate 0 is best; about candidate 1 they disagree (+1 / -1), about
    # candidate 2 they agree it is far worse: BAI asks about the doubtful one, 1.
    rewards = torch.tensor([[[3.0, 2.5, -5.0]], [[3.0, 0.5, -5.0]]])  # both heads: argmax 0
    choice = bai_ts(rewards, gen())
    assert (choice.first.item(), choice.second.item()) == (0, 1) and not choice.clashed.item()


def test_bai_ts_uses_the_bounded_preference_not_the_logit():
    # vs first = 0: candidate 1's logit difference varies more (heads: 10 vs 20 apart) but its
    # outcome is certain under every head; candidate 2's varies less but flips the winner.
    rewards = torch.tensor([[[0.0, -10.0, 0.5]], [[0.0, -20.0, -0.5]]])
    first = torch.tensor([0])
    assert logit_variance(rewards)[0, 0, 1] > logit_variance(rewards)[0, 0, 2]
    assert preference_variance(rewards, first)[0, 2] > preference_variance(rewards, first)[0, 1]
    rewards[:, :, 0] = torch.tensor([[1.0], [1.0]])  # make 0 everyone's argmax
    choice = bai_ts(rewards, gen())
    assert (choice.first.item(), choice.second.item()) == (0, 2)


def test_uncertainty_picks_the_pair_of_largest_logit_variance():
    # heads agree on candidates 0 and 1 exactly; candidates 2 and 3 move in opposite directions
    rewards = torch.tensor([[[0.0, 0.0, 1.0, -1.0]], [[0.0, 0.0, -1.0, 1.0]]])
    var = logit_variance(rewards)  # V[r(2) - r(3)] = V[{2, -2}] = 4
    assert var[0, 2, 3].item() == pytest.approx(4.0) and var[0, 0, 1].item() == 0.0
    choice = uncertainty(rewards, gen())
    assert {choice.first.item(), choice.second.item()} == {2, 3}


def test_forced_clash_with_one_distinct_candidate():
    rewards = torch.randn(3, 1, 3)
    mask = torch.tensor([[True, False, False]])  # candidates 1 and 2 repeat candidate 0
    for name, rule in RULES.items():
        c = rule(rewards, gen(), mask)
        assert c.first.item() == c.second.item() == 0 and c.clashed.item(), name


def test_rules_never_pick_masked_repeats():
    torch.manual_seed(0)
    rewards = torch.randn(4, 64, 6)
    mask = torch.rand(64, 6) > 0.3
    mask[:, 0] = mask[:, 1] = True  # at least two distinct candidates per prompt
    for name, rule in RULES.items():
        c = rule(rewards, gen(), mask)
        rows = torch.arange(64)
        assert mask[rows, c.first].all() and mask[rows, c.second].all(), name
        assert (c.first != c.second).all(), name


def test_erm_labelled_pairs_are_best_and_worst_of_a_sampled_head():
    rewards = torch.tensor([[[0.0, 5.0, -2.0, 1.0]], [[3.0, 0.0, 1.0, -4.0]]])  # (K=2, P=1, M=4)
    outcomes = set()
    for seed in range(20):
        c = erm_labelled_pairs(rewards, gen(seed))
        outcomes.add((c.first.item(), c.second.item()))
    assert outcomes == {(1, 2), (0, 3)}  # head 0: best 1, worst 2; head 1: best 0, worst 3


def test_ensemble_preference_averages_each_heads_probability():
    """Same tensor, pair (1, 2): head 0's margin 5 − (−2) = 7, head 1's 0 − 1 = −1, so
    P = (σ(7) + σ(−1)) / 2 = (0.999089 + 0.268941) / 2 = 0.634015; the reversed pair gets 1 − P."""
    rewards = torch.tensor([[[0.0, 5.0, -2.0, 1.0]], [[3.0, 0.0, 1.0, -4.0]]])
    at, one, two = torch.tensor([0, 0]), torch.tensor([1, 2]), torch.tensor([2, 1])
    assert ensemble_preference(rewards, at, one, two).tolist() == pytest.approx([0.634015, 0.365985], abs=1e-6)


def test_apl_ranks_prompts_by_predictive_entropy_high_first():
    # prompt 0: samples the policy finds likely (log p -1, -2): low entropy 1.5
    # prompt 1: unlikely samples (-8, -10): high entropy 9 -> the policy is unsure there
    # prompt 2: in between (-4, -4): entropy 4
    policy = torch.tensor([[-1.0, -2.0], [-8.0, -10.0], [-4.0, -4.0]])
    assert predictive_entropy(policy).tolist() == [1.5, 9.0, 4.0]
    rows, _ = apl_select(policy, torch.zeros_like(policy), beta=0.1, keep=2)
    assert rows.tolist() == [1, 2]  # ranking by mean log-likelihood would keep [0, 2]: the opposite


def test_apl_pairs_the_largest_implicit_reward_gap():
    # implicit reward 0.5 * (log pi - log pi_ref): [0.5, -1.0, 2.0, 0.0] -> the pair (2, 1), gap 3
    policy = torch.tensor([[1.0, -2.0, 4.0, 0.0]]) - 5.0
    ref = torch.full((1, 4), -5.0)
    rows, choice = apl_select(policy, ref, beta=0.5, keep=1)
    assert rows.tolist() == [0]
    assert {choice.first.item(), choice.second.item()} == {1, 2} and not choice.clashed.item()
    # candidate 2 repeats an earlier one: the best remaining gap is (0, 1), 1.5
    mask = torch.tensor([[True, True, False, True]])
    _, choice = apl_select(policy, ref, beta=0.5, keep=1, mask=mask)
    assert {choice.first.item(), choice.second.item()} == {0, 1}


def test_xpo_duel_is_policy_sample_against_reference_sample():
    choice = policy_vs_reference(torch.zeros(0, 3, 2), gen())
    assert choice.first.tolist() == [0, 0, 0] and choice.second.tolist() == [1, 1, 1]


def test_apl_per_token_entropy_does_not_favour_long_answers():
    # prompt 0: one long unlikely answer pair (-12 over 6 tokens); prompt 1: short (-4 over 1)
    policy = torch.tensor([[-12.0, -12.0], [-4.0, -4.0]])
    lengths = torch.tensor([[6.0, 6.0], [1.0, 1.0]])
    assert predictive_entropy(policy).tolist() == [12.0, 4.0]  # summed: the long answers look uncertain
    assert predictive_entropy(policy, lengths).tolist() == [2.0, 4.0]  # per token: the short one is
    rows, _ = apl_select(policy, torch.zeros_like(policy), 0.1, keep=1, lengths=lengths)
    assert rows.tolist() == [1]


def test_random_clash_is_refused_for_a_rule_without_a_clash():
    from sealign.errors import SealignError
    from sealign.explorer import Explorer

    with pytest.raises(SealignError, match="rule passive has no clash rule"):
        Explorer("passive", 0, random_clash=True)
