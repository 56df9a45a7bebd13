"""`deploykit zoo list|train`: the reference models (needs deploykit[export])."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from . import app, console
from .progress import progress_bar

zoo = typer.Typer(help="Reference models that ship with deploykit, trained on built-in data.", no_args_is_help=True)
app.add_typer(zoo, name="zoo")


@zoo.command("list")
def zoo_list() -> None:
    """List the zoo with families and, for models already trained here, their test metrics."""
    from ..models import ZOO, cached_checkpoint, read_checkpoint

    table = Table("name", "family", "description")
    table.add_column("test metrics (cached model)", no_wrap=True, min_width=24)  # one metric per line, never cut
    for entry in ZOO.values():
        path = cached_checkpoint(entry.name)
        metrics = read_checkpoint(path)["metrics"] if path.is_file() else None
        shown = "\n".join(f"{k}={v:.4g}" for k, v in metrics.items()) if metrics else "not trained yet"
        table.add_row(entry.name, entry.family, entry.description, shown)
    console.print(table)


@zoo.command("train")
def zoo_train(
    name: Annotated[str, typer.Argument(help="zoo model name (see `deploykit zoo list`)")],
    out: Annotated[Path | None, typer.Option(help="checkpoint to write (default: the zoo cache)")] = None,
) -> None:
    """Train a zoo model on its built-in data and write a checkpoint (state dict + config)."""
    from ..models import cached_checkpoint, get_entry, train_zoo

    get_entry(name)
    target = out or cached_checkpoint(name)
    with progress_bar(f"training {name}") as on_step:
        metrics = train_zoo(name, target, on_step)
    console.print(f"wrote {target}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
