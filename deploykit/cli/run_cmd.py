"""`deploykit run BUNDLE --inputs feeds.npz --out outputs.npz`: one graph on your own arrays (torch-free)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from ..api import load
from ..backends import RunnerOptions
from ..errors import InputError
from . import app, console


@app.command("run")
def run_cmd(
    bundle: Annotated[Path, typer.Argument(help="bundle directory")],
    inputs: Annotated[Path, typer.Option(help=".npz with one array per graph input, by name")],
    out: Annotated[Path, typer.Option(help=".npz to write the outputs to")],
    role: Annotated[str | None, typer.Option(help="graph role (needed when the bundle has several)")] = None,
    backend: Annotated[str, typer.Option(help="ort-cpu, ort-cuda, ort-trt or torch")] = "ort-cpu",
    check_finite: Annotated[bool, typer.Option(help="fail on NaN/Inf in inputs or outputs")] = False,
) -> None:
    """Run one graph of a bundle on arrays from an .npz file."""
    if not inputs.is_file():
        raise InputError(f"--inputs '{inputs}' does not exist; save your arrays with np.savez(path, name=array).")
    with np.load(inputs, allow_pickle=False) as data:
        feeds = {k: data[k] for k in data.files}
    with load(bundle, backend, RunnerOptions(check_finite=check_finite)) as deployment:
        outputs = deployment.infer(feeds, role)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **outputs)
    console.print(f"wrote {', '.join(f'{k} {list(v.shape)}' for k, v in outputs.items())} to {out}")
