"""Progress bars shared by every long-running command."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)  # progress and notes
stdout = Console()  # tables of figures, on stdout so they can be piped


def progress_bar(enabled: bool = True) -> Progress:
    """A rich progress bar on stderr; disabled in tests and quiet runs."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=not enabled,
    )


def quiet_libraries() -> None:
    """transformers' own progress bars and advisories would drown ours, in the CLI and when the
    loop is driven from Python (datasets' are turned off where data is loaded)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
