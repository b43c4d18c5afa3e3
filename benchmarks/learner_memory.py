"""Peak memory of one learner step: micro-batches and gradient checkpointing against the one-batch step.

    .venv/bin/python benchmarks/learner_memory.py [--pairs 32] [--tokens 256] [--micro 4] [--threads 1]

The policy is a randomly initialised GPT-2 small (768 wide, 12 layers, 50257-token vocabulary:
124M parameters, fp32, on CPU). A batch of `--pairs` preference pairs is 2 x pairs sequences of
`--tokens` tokens each (a 6-token prompt, the rest response and <eos>); the default, 32 pairs, is
issue 21's "batch 64 x 256 tokens", read as 64 sequences. Its "micro-batch 8" is read as 8
sequences per forward/backward, i.e. `--micro-batch-size 4` pairs (`--micro`); a row with 2 x
`--micro` pairs shows the other reading. The one-batch step is also measured at a quarter and
half of the pairs: at 32 pairs it needs more than this 24 GiB machine, and then the factor is
taken against its linear extrapolation (marked ~).

Each configuration runs in a fresh process that builds the learner (pi_theta, its frozen pi_ref
copy, AdamW), takes one warm-up step on a single short pair, so the gradients and AdamW's moments
exist, and then takes the measured step. Reported: the resident memory after the build and after
the warm-up (current RSS), the process's peak RSS (`ru_maxrss`) over the measured step, and the
step's own peak: peak minus the warmed-up RSS (activations, logits, what backward allocates). The
factor divides the one-batch step's own peak by each row's. Peaks are high-water marks, so one
process per configuration; a child that would exceed `--max-gib` of address space fails alone
rather than pressing on the machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

GiB = 2**30
PROMPT_WORDS = 4  # <bos>, four words and "TL;DR:": 6 prompt tokens


def current_rss() -> int:
    """Resident bytes of this process now (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss() -> int:
    """The most resident bytes this process has held (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(pairs: int, tokens: int, micro: int | None, checkpointing: bool, threads: int, max_gib: float) -> dict:
    """One configuration's step, in this process; returns its memory figures in bytes."""
    limit = int(max_gib * GiB)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from sealign.config import TaskConfig
    from sealign.learner import Learner, LearnerConfig
    from sealign.records import Preferences
    from sealign.tasks import make_task

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    tokenizer = make_task(TaskConfig(n_train=10, n_holdout=10)).build_tokenizer()  # word level: a word is a token
    words = sorted(w for w in tokenizer.get_vocab() if w.isalpha())
    config = GPT2Config(
        vocab_size=50257, n_positions=max(tokens, 64), n_embd=768, n_layer=12, n_head=12,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    model = GPT2LMHeadModel(config)  # ids of the 401-word tokenizer are a subset of the 50257 the model scores
    cfg = LearnerConfig("dpo", 0.1, 1e-5, "constant", 0, 2, micro_batch_size=micro, gradient_checkpointing=checkpointing)
    learner = Learner(model, tokenizer, cfg)
    built = current_rss()

    def text(i: int, n: int) -> str:
        return " ".join(words[(i * 7 + j) % len(words)] for j in range(n))

    response_words = tokens - PROMPT_WORDS - 3  # <bos>, TL;DR:, <eos>
    prompts = [text(i, PROMPT_WORDS) + " TL;DR:" for i in range(pairs)]
    batch = Preferences(prompts, [text(i + 1, response_words) for i in range(pairs)], [text(i + 2, response_words) for i in range(pairs)])
    learner.step(Preferences(prompts[:1], ["apple"], ["river"]))  # gradients and AdamW's moments now exist
    warm = current_rss()
    start = time.perf_counter()
    figures = learner.step(batch)
    return {
        "built": built, "warm": warm, "peak": peak_rss(), "seconds": time.perf_counter() - start,
        "parameters": sum(p.numel() for p in model.parameters()), "loss": figures["loss"],
    }  # fmt: skip


def run(args: argparse.Namespace, micro: int | None, checkpointing: bool) -> dict:
    """One configuration in a fresh process."""
    argv = [sys.executable, __file__, "--worker", "--pairs", str(args.pairs), "--tokens", str(args.tokens)]
    argv += ["--threads", str(args.threads), "--max-gib", str(args.max_gib), "--micro", str(micro or 0)]
    argv += ["--checkpointing"] if checkpointing else []
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["exit %d" % out.returncode])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def one_batch_at(args: argparse.Namespace, measured: dict[int, int]) -> tuple[int, str]:
    """The one-batch step's peak at `args.pairs`: measured, else extrapolated along the line through
    the smaller batches (activations and logits grow linearly with the pairs); and a mark for which."""
    if args.pairs in measured:
        return measured[args.pairs], ""
    (a, peak_a), (b, peak_b) = sorted(measured.items())[-2:]
    return round(peak_b + (peak_b - peak_a) * (args.pairs - b) / (b - a)), "~"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=32, help="preference pairs per batch (2 sequences each)")
    parser.add_argument("--tokens", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--micro", type=int, default=4, help="pairs per micro-batch (0 in a worker: the whole batch)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-gib", type=float, default=18.0, help="address space each configuration may take")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.pairs, args.tokens, args.micro or None, args.checkpointing, args.threads, args.max_gib)))
        return
    print(f"one learner step, GPT-2 124M fp32 on CPU, {args.tokens} tokens per sequence, {args.threads} thread(s)")
    print(f"{'pairs':>5} {'micro-batch':>16} {'checkpointing':>13} {'after build':>11} {'warmed up':>9} {'peak RSS':>9} {'step peak':>9} {'factor':>7} {'seconds':>7}", flush=True)
    one_batch: dict[int, int] = {}  # pairs -> the one-batch step's peak
    rows = [(args.pairs // 4, None, False), (args.pairs // 2, None, False), (args.pairs, None, False)]
    rows += [(args.pairs, 2 * args.micro, False), (args.pairs, args.micro, False), (args.pairs, None, True), (args.pairs, args.micro, True)]
    for pairs, micro, checkpointing in rows:
        r = run(argparse.Namespace(**{**vars(args), "pairs": pairs}), micro, checkpointing)
        label = f"{micro} ({2 * micro} seq)" if micro else "none"
        lead = f"{pairs:>5} {label:>16} {'yes' if checkpointing else 'no':>13}"
        if "error" in r:
            print(f"{lead}  failed: {r['error'][:90]}", flush=True)
            continue
        step = r["peak"] - r["warm"]
        if micro is None and not checkpointing:
            one_batch[pairs] = step
        factor = ""
        if pairs == args.pairs:
            base, mark = one_batch_at(args, one_batch)
            factor = f"{mark}{base / step:.1f}x"
        print(
            f"{lead} {r['built'] / GiB:>9.2f} G {r['warm'] / GiB:>7.2f} G {r['peak'] / GiB:>7.2f} G {step / GiB:>7.2f} G "
            f"{factor:>7} {r['seconds']:>7.0f}",
            flush=True,
        )
    if args.pairs not in one_batch:
        base, _ = one_batch_at(args, one_batch)
        print(f"~: the one-batch step at {args.pairs} pairs did not fit; its peak is extrapolated from {sorted(one_batch)} pairs: {base / GiB:.2f} G")


if __name__ == "__main__":
    main()
