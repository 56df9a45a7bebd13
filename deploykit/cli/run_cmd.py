"""`deploykit run BUNDLE --inputs feeds.npz --out outputs.npz`: one graph on your own arrays (torch-free)."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from ..api import load
from ..backends import RunnerOptions
from ..errors import InputError
from . import SourceOption, app, console, torch_original


def _read_feeds(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz file by name; InputError for anything else (an .npy, a pickle, object arrays)."""
    fix = "save your arrays with np.savez(path, name=array) (numeric arrays, no pickles)"
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"--inputs '{path}' is not an .npz of arrays ({str(exc).split('.')[0]}); {fix}.") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise InputError(f"--inputs '{path}' holds one unnamed array (an .npy); {fix}.")
    feeds = {}
    with data:
        for name in data.files:
            try:
                feeds[name] = data[name]
            except (ValueError, OSError, zipfile.BadZipFile) as exc:
                raise InputError(f"--inputs '{path}': array '{name}': {str(exc).split('.')[0]}; {fix}.") from exc
    return feeds


@app.command("run")
def run_cmd(
    bundle: Annotated[Path, typer.Argument(help="bundle directory")],
    inputs: Annotated[Path, typer.Option(help=".npz with one array per graph input, by name")],
    out: Annotated[Path, typer.Option(help=".npz to write the outputs to")],
    role: Annotated[str | None, typer.Option(help="graph role (needed when the bundle has several)")] = None,
    backend: Annotated[str, typer.Option(help="ort-cpu, ort-cuda, ort-trt or torch")] = "ort-cpu",
    check_finite: Annotated[bool, typer.Option(help="fail on NaN/Inf in inputs or outputs")] = False,
    source: SourceOption = None,
) -> None:
    """Run one graph of a bundle on arrays from an .npz file."""
    if not inputs.is_file():
        raise InputError(f"--inputs '{inputs}' does not exist; save your arrays with np.savez(path, name=array).")
    feeds = _read_feeds(inputs)
    with load(bundle, backend, RunnerOptions(check_finite=check_finite), torch_original(source, bundle)) as deployment:
        outputs = deployment.infer(feeds, role)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **outputs)
    console.print(f"wrote {', '.join(f'{k} {list(v.shape)}' for k, v in outputs.items())} to {out}")
