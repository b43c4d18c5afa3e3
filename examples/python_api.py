"""Drive sealign from Python (a notebook, your own script): build a run's config, train, read the
results, resume.

    python examples/python_api.py                       # SEA-DPO, 1,000 queries, runs/api-example
    python examples/python_api.py OUT --agent online    # `sealign train` flags instead of the config below

A folder that exists already is resumed (a finished run resumes at once, asking nothing).
"""

from __future__ import annotations

import sys
from pathlib import Path

from sealign import RunConfig, TrainConfig, read_run, resume, run_config, train


def main(argv: list[str]) -> None:
    out, flags = (argv[0], argv[1:]) if argv else ("runs/api-example", [])
    if Path(out).exists():
        summary = resume(out, progress=True)
    else:
        # the settings as dataclasses: every field is a `sealign train` option (RunConfig holds
        # task, policy, sft, oracle, erm, model, data, pm and backend parts next to train) ...
        run = RunConfig(TrainConfig(agent="sea", budget=1000, eval_every=250, beta=0.05, lr_schedule="constant_with_warmup", out=out))
        # ... or parsed from flags, exactly as the CLI and the studies do
        if flags:
            run = run_config([*flags, "--out", out])
        summary = train(run, progress=True)
    results = read_run(out)
    print(f"{summary['agent']} {summary['loss']}: {summary['queries']} queries, {summary['labels_asked_this_session']} asked now")
    for row in results.metrics:
        print(f"  queries {row['queries']:>5}  win rate {row['win_rate']:.3f}")
    first = results.queries[0]
    print(f"ledger: {len(results.queries)} labels; the first: {first['first']!r} vs {first['second']!r}, first wins: {first['first_wins']}")


if __name__ == "__main__":
    main(sys.argv[1:])
