"""Progress bars and tables of figures shared by every command."""

from __future__ import annotations

from typing import Sequence

from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

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


def figures_table(title: str, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[str]]) -> Group:
    """A table of figures that fits an 80-column terminal: short headers, each explained once in
    a legend below (`columns`: (header, meaning); an empty meaning needs none)."""
    table = Table(title=title, title_justify="left")
    for header, _ in columns:
        table.add_column(header, no_wrap=True)
    for row in rows:
        table.add_row(*row)
    legend = "; ".join(f"{header}: {meaning}" for header, meaning in columns if meaning)
    return Group(table, Text(legend, style="dim")) if legend else Group(table)


def quiet_libraries() -> None:
    """transformers' own progress bars and advisories would drown ours, in the CLI and when the
    loop is driven from Python (datasets' are turned off where data is loaded)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
