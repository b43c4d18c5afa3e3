"""Built-in tasks: prompts, references, a hidden reward and SFT demonstrations."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sealign.tasks.keywords import KeywordsTask

if TYPE_CHECKING:
    from sealign.config import TaskConfig

TASKS = {"keywords": KeywordsTask}


def make_task(cfg: TaskConfig) -> KeywordsTask:
    """The task named by the (already validated) config."""
    return TASKS[cfg.task](cfg)
