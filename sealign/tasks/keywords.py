"""The built-in `keywords` task: a laptop-scale stand-in for TL;DR summarisation (paper §5.2).

A prompt x is a "post": distinct words from a shipped word list, followed by the marker
``TL;DR:``. A response y is a summary: words separated by spaces. The hidden reward r*(x, y)
plays the part of the paper's reward-model oracle (Skywork-Reward): each word of the
vocabulary has a hidden salience drawn from ``task_seed``, and a good summary mentions the
post's salient words, concisely, without words foreign to the post or repetitions.

The *public judge* plays the part of the data the paper's ERM backbone (PairRM) was pretrained
on: general human preferences, which correlate with the oracle's but are not its. It knows the
universal rules exactly (words outside the post, repeats, length, an empty summary: what any
annotator of summaries agrees on) and judges *what matters in a post* by a public salience
s_pub = 1/2 + ρ (s - 1/2) + √(1 - ρ²) (u - 1/2), u ~ U(0, 1) drawn apart from s, so s_pub has
the mean and variance of s and correlation ρ with it. ρ = 1/√2 was fixed before any SEA run,
from first principles, not tuned: it splits the public salience's variance into equal shared
and private halves, as nothing says that a preference model trained on other people's
comparisons knows more of this oracle's taste than it misses. Two judges with that correlation
order two words of a post alike about 1/2 + arcsin(ρ)/π = 3/4 of the time, the order of the
agreement between two human annotators of summaries. The preference model of
`sealign.preference_model` learns the public judge from pairs no oracle ever labelled.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from typing import TYPE_CHECKING, Mapping, Sequence

import math

import numpy as np
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerFast

from sealign.data import PromptRecord

if TYPE_CHECKING:
    from sealign.config import TaskConfig

MARKER = "TL;DR:"
PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)


@dataclass(frozen=True)
class RewardWeights:
    """Terms of the hidden reward; the defaults define the task."""

    word_cost: float = 0.5  # conciseness: each summary word costs this much salience
    outside_penalty: float = 1.0  # per word that is not in the post
    repeat_penalty: float = 1.0  # per repeated word
    empty_penalty: float = 2.0  # an empty summary
    max_words: int = 8  # summaries longer than this are overlong ...
    overlong_penalty: float = 1.0  # ... and pay this per extra word


def keywords_reward(
    post: Sequence[str], summary: Sequence[str], salience: Mapping[str, float], w: RewardWeights = RewardWeights()
) -> float:
    """Hidden reward r*(x, y) of a summary of a post (the oracle's r* in Eq. 3).

    r* = sum over distinct in-post summary words of (salience - word_cost)
         - outside_penalty * #words not in the post - repeat_penalty * #repeats
         - overlong_penalty * max(0, |y| - max_words);   an empty summary scores -empty_penalty.
    The best summary is therefore the set of post words whose salience exceeds word_cost.
    """
    if not summary:
        return -w.empty_penalty
    in_post = set(post)
    seen: set[str] = set()
    r = 0.0
    for word in summary:
        if word in seen:
            r -= w.repeat_penalty
            continue
        seen.add(word)
        r += salience[word] - w.word_cost if word in in_post else -w.outside_penalty
    return r - w.overlong_penalty * max(0, len(summary) - w.max_words)


def post_words(prompt: str) -> list[str]:
    """The post's words: the prompt without its trailing TL;DR marker."""
    words = prompt.split()
    return words[:-1] if words and words[-1] == MARKER else words


def load_word_list() -> list[str]:
    text = resources.files("sealign.tasks").joinpath("words.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


class KeywordsTask:
    """Data, hidden reward and demonstrations of the keywords task, all determined by task_seed."""

    name = "keywords"
    version = 1  # bump whenever data, reward or demonstrations change: it keys the pi_ref cache
    post_length = (8, 14)  # words per post, inclusive
    reference_length = (2, 4)  # words per reference summary, inclusive
    reference_noise = 1.25  # std of the noise on salience the reference writer sees
    max_new_tokens = 12  # generation budget: room for overlong summaries, which are penalised
    writer_misjudgement = 0.5  # std of the SFT writer's fixed per-word salience error
    writer_noise = 0.3  # std of the SFT writer's fresh per-summary salience noise
    pretraining_edit_share = 0.5  # share of pretraining pairs whose second summary is an edit of the first
    public_correlation = 1 / math.sqrt(2)  # corr(s_pub, s) of the public judge: see the module docstring

    def __init__(self, cfg: TaskConfig, weights: RewardWeights = RewardWeights()):
        self.cfg = cfg
        self.weights = weights
        self.words = load_word_list()
        # spawn(6)[:4] equals spawn(4): adding streams changed none of the earlier ones
        salience_seq, train_seq, holdout_seq, writer_seq, public_seq, pretrain_seq = np.random.SeedSequence(cfg.task_seed).spawn(6)
        self._split_seeds = {"train": train_seq, "holdout": holdout_seq}
        self._split_sizes = {"train": cfg.n_train, "holdout": cfg.n_holdout}
        # Hidden salience s(w) ~ U(0, 1) per vocabulary word: about half are worth mentioning.
        values = np.random.default_rng(salience_seq).uniform(0.0, 1.0, len(self.words))
        self.salience: dict[str, float] = dict(zip(self.words, values.tolist()))
        errors = np.random.default_rng(writer_seq).normal(0.0, self.writer_misjudgement, len(self.words))
        self.writer_bias: dict[str, float] = dict(zip(self.words, errors.tolist()))
        rho, u = self.public_correlation, np.random.default_rng(public_seq).uniform(0.0, 1.0, len(self.words))
        public = 0.5 + rho * (values - 0.5) + math.sqrt(1 - rho**2) * (u - 0.5)
        self.public_salience: dict[str, float] = dict(zip(self.words, public.tolist()))
        self.pretraining_seed = pretrain_seq  # posts and summaries the preference model learns from

    # -- data ---------------------------------------------------------------------------------

    def records(self, split: str) -> list[PromptRecord]:
        """The deterministic `train` or `holdout` split as {prompt, reference} records."""
        if split not in self._split_seeds:
            raise ValueError(f"unknown split {split!r} (known: train, holdout)")
        return self._records[split]

    @cached_property
    def _records(self) -> dict[str, list[PromptRecord]]:
        return {split: self._make_split(split) for split in self._split_seeds}

    def _make_split(self, split: str) -> list[PromptRecord]:
        rng = np.random.default_rng(self._split_seeds[split])
        records = []
        for _ in range(self._split_sizes[split]):
            post = self.random_post(rng)
            records.append(PromptRecord(prompt=" ".join([*post, MARKER]), reference=" ".join(self._reference(post, rng))))
        return records

    def random_post(self, rng: np.random.Generator) -> list[str]:
        """A post's words: `post_length` distinct vocabulary words in random order."""
        lo, hi = self.post_length
        return [self.words[i] for i in rng.choice(len(self.words), size=rng.integers(lo, hi + 1), replace=False).tolist()]

    def _reference(self, post: list[str], rng: np.random.Generator) -> list[str]:
        """A mediocre human-like summary: the k words that look most salient through noise, in post order."""
        k = int(rng.integers(self.reference_length[0], self.reference_length[1] + 1))
        noisy = np.array([self.salience[w] for w in post]) + rng.normal(0.0, self.reference_noise, len(post))
        keep = sorted(np.argsort(-noisy)[:k].tolist())
        return [post[i] for i in keep]

    def check_record(self, record: PromptRecord) -> str | None:
        """Why this task's hidden reward cannot judge a record (user data), or None if it can."""
        words = record.prompt.split()
        if not words or words[-1] != MARKER:
            return f"the prompt must end with {MARKER!r}"
        unknown = sorted({w for w in words[:-1] + (record.reference or "").split() if w not in self.salience})
        if unknown:
            return f"words outside the keywords vocabulary: {', '.join(unknown[:5])}"
        return None

    # -- oracle side --------------------------------------------------------------------------

    def reward(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """r*(x, y) for each (prompt, response) pair of texts."""
        return [
            keywords_reward(post_words(x), y.split(), self.salience, self.weights) for x, y in zip(prompts, responses)
        ]

    def public_reward(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """The public judge's reward: r* with the public salience s_pub in place of s (module docstring)."""
        return [
            keywords_reward(post_words(x), y.split(), self.public_salience, self.weights) for x, y in zip(prompts, responses)
        ]

    def pretraining_pairs(self, n: int, rng: np.random.Generator) -> list[tuple[str, str, str]]:
        """n (prompt, summary a, summary b) triples for pretraining a preference model, on fresh posts.

        Summaries are drawn without regard to any salience: a random number of post words in post
        order, sometimes with words from outside the post, a repeat or too many words. Half of the
        second summaries are the first after one edit (`_edit`), so that close pairs (as a
        policy's samples are) are common; the other half are drawn afresh.
        """
        out = []
        for _ in range(n):
            post = self.random_post(rng)
            a = self._random_summary(post, rng)
            b = self._edit(post, a, rng) if rng.random() < self.pretraining_edit_share else self._random_summary(post, rng)
            out.append((" ".join([*post, MARKER]), " ".join(a), " ".join(b)))
        return out

    def _random_summary(self, post: list[str], rng: np.random.Generator) -> list[str]:
        k = int(rng.integers(0, min(len(post), self.weights.max_words + 2) + 1))
        words = [post[i] for i in sorted(rng.choice(len(post), size=k, replace=False).tolist())]
        for _ in range(rng.binomial(3, 0.25)):  # any vocabulary word: nearly always foreign to the post
            words.insert(int(rng.integers(len(words) + 1)), self.words[int(rng.integers(len(self.words)))])
        for _ in range(rng.binomial(2, 0.15) if words else 0):  # repeats
            words.insert(int(rng.integers(len(words) + 1)), words[int(rng.integers(len(words)))])
        return words

    def _edit(self, post: list[str], summary: list[str], rng: np.random.Generator) -> list[str]:
        """`summary` with one edit: a post word added, a word dropped, a word swapped for another
        post word, a word from outside the post put in, or a word repeated."""
        out = list(summary)
        unused = [w for w in post if w not in out]
        moves = ["foreign"] + (["add"] if unused else []) + (["drop", "repeat"] if out else []) + (["swap"] if out and unused else [])
        move = moves[int(rng.integers(len(moves)))]
        at = int(rng.integers(len(out) + 1))
        if move == "drop":
            del out[int(rng.integers(len(out)))]
        elif move == "add":
            out.insert(at, unused[int(rng.integers(len(unused)))])
        elif move == "swap":
            out[int(rng.integers(len(out)))] = unused[int(rng.integers(len(unused)))]
        elif move == "foreign":
            out.insert(at, self.words[int(rng.integers(len(self.words)))])
        else:
            out.insert(at, out[int(rng.integers(len(out)))])
        return out

    def optimal_summary(self, prompt: str) -> str:
        """argmax_y r*(x, y): the (at most max_words) most salient post words worth their cost, in post order.

        An extra word gains at most 1 - word_cost < overlong_penalty, so the cap binds.
        """
        post = post_words(prompt)
        worth = sorted((w for w in post if self.salience[w] > self.weights.word_cost), key=self.salience.__getitem__)
        keep = set(worth[-self.weights.max_words :])
        return " ".join(w for w in post if w in keep)

    # -- SFT demonstrations -------------------------------------------------------------------

    def demonstration(self, prompt: str, rng: np.random.Generator) -> str:
        """An imperfect summary for SFT, by a writer who judges salience badly.

        The writer keeps the post words (in order) whose salience *as the writer sees it* exceeds
        the word cost: s(w) plus a fixed per-word misjudgement (drawn from task_seed, so a fully
        trained pi_ref stays wrong about some words) plus fresh noise per summary (so pi_ref is
        diverse and its samples cover better summaries than its greedy one). This leaves room for
        alignment to climb, as the paper's SFT policies start well below the oracle's optimum.
        A word-by-word rule is also what a small model learns quickly; uniformly random subsets
        take it far longer to fit.
        """
        post = post_words(prompt)
        noise = rng.normal(0.0, self.writer_noise, len(post))
        summary = [w for w, e in zip(post, noise) if self.salience[w] + self.writer_bias[w] + e > self.weights.word_cost]
        return " ".join(summary or [post[int(rng.integers(len(post)))]])

    # -- tokenizer ----------------------------------------------------------------------------

    def build_tokenizer(self) -> PreTrainedTokenizerFast:
        """A word-level tokenizer over the word list, wrapped as a transformers fast tokenizer.

        Encoding a text prepends <bos> (as Llama tokenizers do); responses end with <eos>, and so
        does a (prompt, response) text pair.
        """
        vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, MARKER, *self.words])}
        core = Tokenizer(WordLevel(vocab, unk_token=UNK))
        core.pre_tokenizer = WhitespaceSplit()
        # a pair (prompt, response), as a reward model reads it, is <bos> prompt response <eos>
        core.post_processor = TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A $B:1 {EOS}:1", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK, padding_side="left"
        )
