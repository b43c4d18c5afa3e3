"""The epistemic reward model: Eq. 9 by hand, learning a planted preference, the anchor pull,
features from a real transformers backbone, and best-of-N under the ensemble mean."""

from __future__ import annotations

import math

import pytest
import torch

from sealign.config import ERMConfig, PolicyConfig
from sealign.errors import SealignError
from sealign.erm import (
    Backbone,
    EpistemicRewardModel,
    anchor_penalty,
    bradley_terry_nll,
    ensemble_rewards,
    erm_loss,
    grounding,
    head_mlp,
    init_heads,
    per_token,
    pool,
    token_logprob_stats,
)
from sealign.evaluate import best_of_n
from sealign.explorer import Explorer
from sealign.policy import build_policy, encode_pairs, sequence_logprobs, token_logprobs


def test_bradley_terry_nll_by_hand():
    # one head, two pairs with margins 0 and 2: (log 2 + log(1 + e^-2)) / 2
    chosen, rejected = torch.tensor([[1.0, 3.0]]), torch.tensor([[1.0, 1.0]])
    expected = (math.log(2) + math.log(1 + math.exp(-2))) / 2
    assert bradley_terry_nll(chosen, rejected).item() == pytest.approx(expected, rel=1e-6)


def test_erm_loss_adds_the_scaled_anchor_per_head():
    params = init_heads(3, 4, 5, torch.Generator().manual_seed(0))
    init = {n: t.clone() for n, t in params.items()}
    params["w3"] = params["w3"] + 0.5  # move every head: ||phi_k - phi_k0||^2 = 5 * 0.25 = 1.25
    assert anchor_penalty(params, init).tolist() == pytest.approx([1.25] * 3)
    x_c, x_r = torch.randn(3, 7, 4), torch.randn(3, 7, 4)
    nll = bradley_terry_nll(ensemble_rewards(params, x_c), ensemble_rewards(params, x_r)).sum()
    # lambda = 2, |D| = 10: each head pays 2 / 10 * 1.25 = 0.25
    assert erm_loss(params, init, x_c, x_r, 2.0, 10).item() == pytest.approx(nll.item() + 3 * 0.25, rel=1e-6)


def test_ensemble_rewards_shapes_and_heads_differ():
    params = init_heads(4, 6, 8, torch.Generator().manual_seed(1))
    x = torch.randn(10, 6)
    r = ensemble_rewards(params, x)
    assert r.shape == (4, 10)
    assert torch.allclose(ensemble_rewards(params, x[None].expand(4, -1, -1)), r)  # per-head input, same features
    assert not torch.allclose(r[0], r[1])  # different initial weights, different prior samples


def test_pooling_by_hand():
    hidden = torch.arange(12, dtype=torch.float).reshape(1, 4, 3)  # positions 0..3, 3 features
    mask = torch.tensor([[False, True, True, False]])
    assert pool(hidden, mask, "sum").tolist() == [[9.0, 11.0, 13.0]]  # rows 1 and 2
    assert pool(hidden, mask, "mean").tolist() == [[4.5, 5.5, 6.5]]
    assert pool(hidden, mask, "last").tolist() == [[6.0, 7.0, 8.0]]


def test_erm_learns_a_planted_linear_preference():
    """Labels from a hidden linear reward w.x: the ensemble mean ranks held-out pairs >= 90% right."""
    g = torch.Generator().manual_seed(0)
    d = 16
    w = torch.randn(d, generator=g)
    a, b = torch.randn(1000, d, generator=g), torch.randn(1000, d, generator=g)
    a_wins = (a @ w > b @ w)[:, None]
    erm = EpistemicRewardModel(d, ERMConfig(erm_heads=8, erm_hidden=32), seed=0)
    erm.add(torch.where(a_wins, a, b)[:800], torch.where(a_wins, b, a)[:800])
    for _ in range(60):
        erm.train_round()
    test_a, test_b = a[800:], b[800:]
    predicted = erm.rewards(test_a).mean(0) > erm.rewards(test_b).mean(0)
    accuracy = (predicted == a_wins[800:, 0]).double().mean().item()
    assert accuracy >= 0.9


def test_anchor_pulls_each_head_towards_its_own_initial_weights():
    """With no informative data (every pair tied: chosen == rejected features) the BT gradient
    vanishes and only the anchor acts: moved heads return to *their own* phi_k0, not to a common
    point, so the ensemble keeps its spread."""
    d = 4
    erm = EpistemicRewardModel(d, ERMConfig(erm_heads=3, erm_hidden=8, erm_lambda=50.0, erm_lr=1e-2), seed=0)
    x = torch.randn(16, d)
    erm.add(x, x)
    with torch.no_grad():
        for p in erm.params.values():
            p.add_(0.3)  # push every head away from its prior
    before = anchor_penalty(erm.params, erm.init).detach()
    for _ in range(40):
        erm.train_round()
    after = anchor_penalty(erm.params, erm.init).detach()
    assert (after < 0.05 * before).all()
    spread = (erm.params["w1"][0] - erm.params["w1"][1]).abs().mean()
    assert spread > 0.1  # heads did not collapse onto each other


def test_explorer_features_from_the_reference_backbone(task, tmp_path):
    """Any transformers checkpoint folder is a backbone; its width is read from the config."""
    tokenizer = task.build_tokenizer()
    model = build_policy(PolicyConfig("tiny"), tokenizer)
    model.save_pretrained(tmp_path / "ref")
    tokenizer.save_pretrained(tmp_path / "ref")
    explorer = Explorer("bai_ts", 0, ERMConfig(erm_heads=4, erm_hidden=8), tmp_path / "ref")
    assert explorer.backbone.width == model.config.n_embd
    prompt = task.records("holdout")[0].prompt
    feats = explorer.features([prompt, prompt, prompt], ["apple", "river", "apple"])
    assert feats.shape == (3, model.config.n_embd)
    assert torch.equal(feats[0], feats[2]) and not torch.equal(feats[0], feats[1])
    assert explorer.mean_reward([prompt], ["apple"]).shape == (1,)


def test_token_logprob_stats_by_hand():
    # vocab of 2; row 0 predicts token 1 with p = 3/4 (logits 0, log 3), then token 0 with p = 1/2
    logits = torch.zeros(2, 2, 2)
    logits[0, 0, 1] = math.log(3)
    ids = torch.tensor([[0, 1, 0], [0, 1, 0]])
    logp = torch.nn.functional.pad(token_logprobs(logits, ids[:, 1:]), (1, 0))  # (2, 3): position 0 unpredicted
    mask = torch.tensor([[False, True, True], [False, False, True]])  # row 1: only the last token
    stats = token_logprob_stats(logp, mask)
    lp, half = math.log(3 / 4), math.log(1 / 2)
    assert stats[0].tolist() == pytest.approx([lp + half, (lp + half) / 2, half], rel=1e-6)
    assert stats[1].tolist() == pytest.approx([half, half, half], rel=1e-6)


@pytest.fixture
def saved_reference(task, tmp_path):
    tokenizer = task.build_tokenizer()
    model = build_policy(PolicyConfig("tiny"), tokenizer)
    model.save_pretrained(tmp_path / "ref")
    tokenizer.save_pretrained(tmp_path / "ref")
    return model.eval(), tokenizer, tmp_path / "ref"


def test_backbone_layer_and_logprob_features(task, saved_reference):
    """--erm-layer 0 pools the input embeddings (token + position); --erm-logprobs appends the
    sum, mean and min of log pi(y_t | x, y_<t), whose sum and mean agree with sequence_logprobs."""
    model, tokenizer, path = saved_reference
    prompts = [r.prompt for r in task.records("holdout")[:3]]
    responses = ["apple", "river apple", ""]
    d = model.config.n_embd
    default = Backbone(path).features(prompts, responses)
    assert torch.equal(Backbone(path, layer=4).features(prompts, responses), default)  # tiny: hidden states 0..4
    batch = encode_pairs(tokenizer, prompts, responses)
    with torch.no_grad():
        last = model.transformer(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        embedded = model.transformer.wte(batch["input_ids"]) + model.transformer.wpe(torch.arange(batch["input_ids"].shape[1]))
        seq_logp, lengths = sequence_logprobs(model, tokenizer, prompts, responses)
    assert torch.allclose(default, pool(last, batch["response_mask"], "mean"), atol=1e-6)  # the default is unchanged
    backbone = Backbone(path, "sum", layer=0, logprobs=True)
    assert backbone.width == d + 3
    feats = backbone.features(prompts, responses)
    assert feats.shape == (3, d + 3)
    assert torch.allclose(feats[:, :d], pool(embedded, batch["response_mask"], "sum"), atol=1e-5)
    assert torch.allclose(feats[:, d], seq_logp, atol=1e-4)
    assert torch.allclose(feats[:, d + 1], seq_logp / lengths, atol=1e-4)
    assert (feats[:, d + 2] <= feats[:, d + 1] + 1e-6).all()  # the least likely token is at most the mean


def test_decoder_backbone_reads_each_prompt_once_with_the_same_features(task, saved_reference):
    """A causal backbone shares each prompt's key/value cache among its responses; the features
    equal those of reading every prompt + response whole, for any layer, pooling and log-probs."""
    path = saved_reference[2]
    p, q = (r.prompt for r in task.records("holdout")[:2])
    prompts, responses = [p, p, q, p, q], ["apple", "river apple", "", "apple apple apple", "stone"]
    for backbone in (Backbone(path), Backbone(path, "last", layer=2, logprobs=True), Backbone(path, "sum", layer=0, logprobs=True)):
        shared = backbone.features(prompts, responses)
        r = backbone._whole(prompts, responses)
        whole = pool(r.hidden, r.mask, backbone.pooling)
        if backbone.logprobs:
            whole = torch.cat([whole, token_logprob_stats(r.logp, r.mask)], 1)
        assert shared.shape == (5, backbone.width)
        assert torch.allclose(shared, whole, atol=1e-5)


def test_backbone_rejects_a_layer_it_does_not_have(saved_reference):
    with pytest.raises(SealignError, match="--erm-layer 5 is out of range"):
        Backbone(saved_reference[2], layer=5)  # tiny: 4 blocks, hidden states 0..4


def test_explorer_passes_layer_and_logprobs_to_its_backbone(saved_reference):
    explorer = Explorer("bai_ts", 0, ERMConfig(erm_heads=2, erm_hidden=4, erm_layer=0, erm_logprobs=True), saved_reference[2])
    assert (explorer.backbone.layer, explorer.backbone.logprobs) == (0, True)
    assert explorer.erm.chosen.shape[1] == explorer.backbone.width == saved_reference[0].config.n_embd + 3


def test_best_of_n_picks_the_ensemble_mean_argmax(task, tmp_path, monkeypatch):
    """Head 0 likes a, head 1 likes b, neither is sure of c; the mean prefers c: BoN answers c."""
    explorer = Explorer("bai_ts", 0)
    explorer.erm = EpistemicRewardModel(2, ERMConfig(erm_heads=2, erm_hidden=4), seed=0)
    per_head = {"a": [3.0, -2.0], "b": [-2.0, 3.0], "c": [1.0, 1.0]}  # means 0.5, 0.5, 1.0
    monkeypatch.setattr(explorer, "features", lambda prompts, responses: torch.tensor([per_head[r] for r in responses]))
    monkeypatch.setattr(explorer.erm, "rewards", lambda feats: feats.T)  # (K, B): one column per response
    assert best_of_n([["a", "b", "c"], ["b", "a", "a"]], ["x", "y"], explorer.mean_reward) == ["c", "b"]


def test_per_token_rewards_sum_each_tokens_score_by_hand():
    """Pooling "tokens": r_k = Σ_t mask_t g_k(x_t), g_k the head's MLP on one token's features;
    padded positions count nothing, and per-head rows give the same rewards as shared ones."""
    params = init_heads(3, 2, 4, torch.Generator().manual_seed(0))
    x = torch.randn(5, 3, 2)  # 5 responses, 3 token slots, 2 features each
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 0]], dtype=torch.float)
    x[mask == 0] = 0.0
    flat = torch.cat([x, mask[..., None]], -1).flatten(1)  # (5, 3 * (2 + 1))
    expected = torch.stack([sum(head_mlp(params, x[:, t])[:, i] * mask[i, t] for t in range(3)) for i in range(5)], 1)
    r = ensemble_rewards(params, flat, tokens=3)
    assert r.shape == (3, 5)
    assert torch.allclose(r, expected, atol=1e-6)
    assert r[:, 3].abs().max() == 0  # an empty response: no token, no reward
    assert torch.allclose(ensemble_rewards(params, flat[None].expand(3, -1, -1), tokens=3), r)
    order = torch.stack([torch.randperm(5, generator=torch.Generator().manual_seed(k)) for k in range(3)])  # (K, 5)
    own = ensemble_rewards(params, flat[order], tokens=3)  # each head its own rows, with other token counts
    assert torch.allclose(own, torch.stack([expected[k, order[k]] for k in range(3)]), atol=1e-6)


def test_per_token_features_are_the_response_tokens_in_order(saved_reference):
    """`per_token` moves the masked positions left, in order, pads with zero rows and cuts at the
    limit: summed over tokens they are the "sum" pooling, and the log-prob column sums to the
    sequence log-prob, for the shared-prompt path and for reading each pair whole."""
    x = torch.arange(12, dtype=torch.float).reshape(2, 3, 2)
    mask = torch.tensor([[False, True, True], [True, False, False]])
    assert per_token(x, mask, 2).tolist() == [[2.0, 3.0, 1.0, 4.0, 5.0, 1.0], [6.0, 7.0, 1.0, 0.0, 0.0, 0.0]]
    assert per_token(x, mask, 1).tolist() == [[2.0, 3.0, 1.0], [6.0, 7.0, 1.0]]  # cut at the limit

    path = saved_reference[2]
    prompts, responses = ["alpha beta TL;DR:", "alpha beta TL;DR:", "gamma TL;DR:"], ["apple", "river apple", ""]
    tokens = Backbone(path, "tokens", layer=0, logprobs=True, tokens=4)
    d = saved_reference[0].config.n_embd
    assert tokens.width == 4 * (d + 2)
    rows = tokens.features(prompts, responses).unflatten(-1, (4, d + 2))  # (3, 4, d + 1 log-prob + 1 mask)
    assert rows[..., -1].tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]]  # each response and its <eos>
    summed = Backbone(path, "sum", layer=0, logprobs=True).features(prompts, responses)
    assert torch.allclose(rows[..., :d].sum(1), summed[:, :d], atol=1e-5)
    assert torch.allclose(rows[..., d].sum(1), summed[:, d], atol=1e-5)  # Σ_t log pi(y_t | ...)
    r = tokens._whole(prompts, responses)
    assert torch.allclose(per_token(torch.cat([r.hidden, r.logp[..., None]], -1), r.mask, 4), rows.flatten(1), atol=1e-5)
    cut = Backbone(path, "tokens", layer=0, logprobs=True, tokens=2).features(prompts, responses).unflatten(-1, (2, d + 2))
    assert torch.equal(cut, rows[:, :2])  # a response longer than the limit keeps its first tokens


def test_grounding_is_the_largest_embedding_similarity_to_the_prompt_and_to_earlier_tokens():
    """Token 2 of the response is copied from the prompt (similarity 1), token 3 repeats token 2;
    the first token has nothing before it (-1) and padding in the prompt is never matched."""
    table = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [-1.0, 0.0]])  # ids 0..3
    ids = torch.tensor([[1, 2, 2, 0]])
    mask = torch.tensor([[True, True, True, False]])
    prompt_ids, prompt_mask = torch.tensor([[3, 2, 0]]), torch.tensor([[True, True, False]])
    g = grounding(table, ids, mask, prompt_ids, prompt_mask)
    c = 2**-0.5  # cos between (0, 2) and (1, 1)
    assert torch.allclose(g[0, :3], torch.tensor([[c, -1.0], [1.0, c], [1.0, 1.0]]))
    assert g[0, 3, 0].item() == pytest.approx(c)  # id 0 is the prompt's padding: not a match


def test_backbone_grounding_features_mark_copied_and_repeated_tokens(saved_reference):
    """With --erm-grounding each token carries [states, log-prob, copied, repeated, mask]: a post
    word scores 1 against the prompt, a repeat 1 against the tokens before it, and reading each
    prompt once gives the same rows as reading every pair whole."""
    path, d = saved_reference[2], saved_reference[0].config.n_embd
    prompts, responses = ["alpha beta TL;DR:"] * 2 + ["gamma TL;DR:"], ["beta", "apple beta beta", ""]
    backbone = Backbone(path, "tokens", layer=0, logprobs=True, tokens=4, grounding=True)
    assert backbone.width == 4 * (d + 4)
    rows = backbone.features(prompts, responses).unflatten(-1, (4, d + 4))
    copied, repeated, mask = rows[..., d + 1], rows[..., d + 2], rows[..., d + 3]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert copied[0, 0].item() == pytest.approx(1.0) and repeated[0, 0].item() == -1.0  # "beta": in the post, first
    assert copied[1, 0] < 1 and copied[1, 1:3].tolist() == pytest.approx([1.0, 1.0])  # "apple" is not in the post
    assert repeated[1, 2].item() == pytest.approx(1.0) and repeated[1, 1] < 1  # the second "beta" repeats the first
    r = backbone._whole(prompts, responses)
    table = backbone.model.get_input_embeddings().weight
    g = grounding(table, r.ids, r.mask, r.prompt_ids, r.prompt_mask)
    whole = per_token(torch.cat([r.hidden, r.logp[..., None], g], -1), r.mask, 4)
    assert torch.allclose(whole, rows.flatten(1), atol=1e-5)
    with pytest.raises(ValueError, match="need pooling 'tokens'"):
        Backbone(path, "mean", grounding=True)
    with pytest.raises(SealignError, match="--erm-grounding adds features to each response token: it needs --erm-pooling tokens"):
        ERMConfig(erm_grounding=True)  # the flag's check, one line before any work


def test_explorer_with_per_token_pooling_learns_and_scores(saved_reference):
    explorer = Explorer(
        "ee_ts", 0, ERMConfig(erm_heads=2, erm_hidden=4, erm_layer=0, erm_logprobs=True), saved_reference[2], "tokens",
        response_tokens=5,
    )  # fmt: skip
    d = saved_reference[0].config.n_embd
    assert (explorer.backbone.tokens, explorer.erm.tokens) == (5, 5)
    assert explorer.erm.params["w1"].shape == (2, d + 1, 4)  # one token's states and log-prob in
    feats = explorer.features(["alpha TL;DR:"] * 2, ["apple", "river"])
    explorer.erm.add(feats[:1], feats[1:])
    assert math.isfinite(explorer.erm.train_round())
    assert explorer.mean_reward(["alpha TL;DR:"], ["apple"]).shape == (1,)


def test_grounding_under_a_byte_level_bpe_tokenizer(tmp_path):
    """Under a GPT-2-style byte-level BPE (trained here on a few lines, saved and loaded by path
    like any checkpoint's), a word copied from the post with its leading space is the post's own
    token (similarity 1); the same letters glued into an unseen word split into other pieces, of
    which only some are the post's: grounding is then a soft lexical overlap, not copy detection."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer, core.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(["the cat sat on the mat", "a dog ran to the park", "TL;DR: the cat"] * 20, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", pad_token="<pad>")
    torch.manual_seed(0)
    ids = dict(bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=16, n_layer=1, n_head=2, **ids))
    model.save_pretrained(tmp_path / "bpe")
    tok.save_pretrained(tmp_path / "bpe")
    backbone = Backbone(tmp_path / "bpe", "tokens", layer=0, logprobs=True, tokens=4, grounding=True)
    responses = [" cat mat", " dog", " catmat"]
    assert [tok.tokenize(r) for r in responses] == [["Ġcat", "Ġmat"], ["Ġdog"], ["Ġcat", "mat"]]
    d = model.config.n_embd
    copied = backbone.features(["the cat sat on the mat TL;DR:"] * 3, responses).unflatten(-1, (4, d + 4))[..., d + 1]
    assert copied[0, :2].tolist() == pytest.approx([1.0, 1.0])  # both words are the post's, space and all
    assert copied[1, 0] < 1  # "dog" is not in the post
    assert copied[2, 0].item() == pytest.approx(1.0) and copied[2, 1] < 1  # "mat" glued on is not the post's " mat"
