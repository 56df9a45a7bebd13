"""`deploykit pack BUNDLE --edge --out DIR`: ORT-format graphs and operator list for devices (torch-free)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..edge import pack_edge, size_report
from ..errors import InputError
from . import app, console


@app.command("pack")
def pack_cmd(
    bundle: Annotated[Path, typer.Argument(help="bundle to pack (left untouched)")],
    out: Annotated[Path, typer.Option(help="directory of the packed bundle")],
    edge: Annotated[bool, typer.Option(help="ORT-format graphs + required_operators.config for minimal onnxruntime builds")] = False,
    force: Annotated[bool, typer.Option(help="replace an existing bundle at --out")] = False,
) -> None:
    """Pack a bundle for a deployment target, verified after conversion (golden replay)."""
    if not edge:
        raise InputError("pack needs a target: --edge (ORT format for onnxruntime on devices). "
                         "For Triton Inference Server use `deploykit triton`.")
    packed = pack_edge(bundle, out, force)
    console.print(f"wrote {out} (golden replay passed)", highlight=False)
    console.print(size_report(packed), highlight=False, markup=False)
