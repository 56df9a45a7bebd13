"""The `deploykit` command line: commands parse arguments and call the library, nothing more."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import DeploykitError

app = typer.Typer(
    name="deploykit",
    help="Export PyTorch models to ONNX bundles, verify parity, sample and profile them without PyTorch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

SourceOption = Annotated[str | None, typer.Option(
    "--source", help="the torch original, for the torch backend and fresh-input checks: MODULE:FACTORY, a checkpoint, "
                     "zoo:NAME, hf:DIR or diffusers:DIR (paths and code a bundle names are never opened)")]


def torch_original(source: str | None, bundle: Path) -> Any:
    """The model `--source` names for `bundle`, checked against what it was exported from; None without --source."""
    if source is None:
        return None
    from ..bundle import load_bundle
    from ..sources import reference

    return reference(source, load_bundle(bundle))


def print_fused(manifest: dict[str, Any]) -> None:
    """What `export --fuse` fused, one line per role (export and inspect print it)."""
    for role, ops in manifest.get("fused", {}).items():
        console.print(f"fused (export --fuse, opset-23 operators for onnxruntime) in '{role}': "
                      + ", ".join(f"{count} {op}" for op, count in ops.items()), highlight=False, markup=False)


from . import (  # noqa: F401
    compress_cmd,
    engine_cmd,
    export_cmd,
    inspect_cmd,
    pack_cmd,
    profile_cmd,
    prune_cmd,
    quantize_cmd,
    run_cmd,
    sample_cmd,
    triton_cmd,
    verify_cmd,
    zoo_cmd,
)


def main(argv: list[str] | None = None) -> int:
    """Entry point: DeploykitError -> short message and exit code 2; parity failure -> 1; usage error -> 2."""
    try:
        app(args=argv, prog_name="deploykit")
        code: int | str | None = 0
    except SystemExit as exc:  # typer's standalone mode ends every run with SystemExit
        code = exc.code
    except DeploykitError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)  # messages hold [shapes]
        code = 2
    if argv is None:
        sys.exit(code)
    return code if isinstance(code, int) else 1
