"""Progress on a terminal: a rich progress bar as a training `on_step(done, total)` callback (shown once a step
happens) and a status line for the phases of long work (export, quantize); both stay quiet when output is piped."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int], None]]:
    """Yield a callback that advances a progress bar labelled `label` (started on the first call)."""
    bar: Progress | None = None

    def on_step(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                           transient=True)
            bar.start()
            bar.add_task(label, total=total)
        bar.update(bar.task_ids[0], completed=done, total=total)

    try:
        yield on_step
    finally:
        if bar is not None:
            bar.stop()


@contextmanager
def phase_line(label: str) -> Iterator[Callable[[str], None]]:
    """Yield a callback that shows `label: phase` on one transient status line of stderr, on a terminal only."""
    console = Console(stderr=True)
    if not console.is_terminal:
        yield lambda phase: None
        return
    with console.status(label) as status:
        yield lambda phase: status.update(f"{label}: {phase}")
