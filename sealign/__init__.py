"""sealign: sample-efficient online alignment of language models (the SEA paper).

The Python API, the same runs as `sealign train`:

    from sealign import RunConfig, TrainConfig, read_run, train
    run = RunConfig(TrainConfig(agent="sea", budget=2000, out="runs/sea"))
    summary = train(run)                 # or resume("runs/sea") after an interruption
    metrics = read_run("runs/sea").metrics

Names load on first use, so `import sealign` (and the CLI) stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "train": "sealign.loop",
    "resume": "sealign.loop",
    "read_run": "sealign.runfolder",
    "RunResults": "sealign.runfolder",
    "run_config": "sealign.cli",
    **{
        name: "sealign.config"
        for name in (
            "RunConfig", "TrainConfig", "TaskConfig", "PolicyConfig", "SFTConfig", "OracleConfig", "ERMConfig",
            "ModelConfig", "DataConfig", "PreferenceModelConfig", "BackendConfig",
        )
    },  # fmt: skip
    "AGENTS": "sealign.agents",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sealign' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return [*globals(), *__all__]
