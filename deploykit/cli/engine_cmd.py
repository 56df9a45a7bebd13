"""`deploykit build-engine BUNDLE [--fp16] [--min/--opt/--max-shapes NAME:DxD...]`: TensorRT engines in the bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..engines import EngineRequest, build_engines, parse_shapes
from . import app, console

SHAPES = "repeatable NAME:DxDx... (default: from the manifest's dynamic axes)"


@app.command("build-engine")
def build_engine_cmd(
    bundle: Annotated[Path, typer.Argument(help="bundle whose graphs to build (engines go to BUNDLE/engines)")],
    fp16: Annotated[bool, typer.Option(help="allow fp16 kernels")] = False,
    min_shapes: Annotated[list[str] | None, typer.Option(help=f"profile minimum, {SHAPES}")] = None,
    opt_shapes: Annotated[list[str] | None, typer.Option(help=f"profile optimum, {SHAPES}")] = None,
    max_shapes: Annotated[list[str] | None, typer.Option(help=f"profile maximum, {SHAPES}")] = None,
    max_batch: Annotated[int, typer.Option(help="default profile's largest batch")] = 64,
    workspace: Annotated[int, typer.Option(help="builder workspace limit in MiB")] = 1024,
    role: Annotated[list[str] | None, typer.Option(help="repeatable; only these graphs (default: all)")] = None,
    device_id: Annotated[int, typer.Option(help="CUDA device to build for")] = 0,
) -> None:
    """Build a TensorRT engine per graph with an optimization profile per dynamic input and a timing cache."""
    request = EngineRequest(
        fp16, workspace, max_batch, parse_shapes(min_shapes or [], "--min-shapes"),
        parse_shapes(opt_shapes or [], "--opt-shapes"), parse_shapes(max_shapes or [], "--max-shapes"), role, device_id,
    )
    for entry in build_engines(bundle, request):
        ranges = ", ".join(f"{k} {v['min']}..{v['max']}" for k, v in entry["profile"].items())
        console.print(f"{entry['file']}: {entry['bytes'] / 1024:.1f} KiB, profile {ranges}", highlight=False)
