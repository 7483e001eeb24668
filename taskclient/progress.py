"""The progress bar of the bulk commands: on a terminal only, never in a file or a CI log."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


@contextlib.contextmanager
def progress_bar(console: Console, total: int, label: str) -> Iterator[Callable[[], None]]:
    """Yields `advance()`, safe to call from worker threads; a bar labelled `label` when `console` is a
    terminal, else nothing at all."""
    if not console.is_terminal:
        yield lambda: None
        return
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        bar = progress.add_task(label, total=total)
        lock = threading.Lock()

        def advance() -> None:
            with lock:  # results arrive from worker threads
                progress.advance(bar)

        yield advance
