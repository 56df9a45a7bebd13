"""`deploykit run BUNDLE --inputs feeds.npz --out outputs.npz`: one graph on your own arrays, or `--text "..."` for a
text encoder (torch-free)."""

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
    inputs: Annotated[Path | None, typer.Option(help=".npz with one array per graph input, by name")] = None,
    out: Annotated[Path | None, typer.Option(help=".npz to write the outputs to (with --text: per text, 'NAME.i')")] = None,
    text: Annotated[list[str] | None, typer.Option(help="a text for a text encoder (repeat for a batch): prints the "
                                                        "fill-mask candidates, the classes or the feature shape")] = None,
    role: Annotated[str | None, typer.Option(help="graph role (needed when the bundle has several)")] = None,
    backend: Annotated[str, typer.Option(help="ort-cpu, ort-cuda, ort-trt or torch")] = "ort-cpu",
    check_finite: Annotated[bool, typer.Option(help="fail on NaN/Inf in inputs or outputs")] = False,
    source: SourceOption = None,
) -> None:
    """Run one graph of a bundle on arrays from an .npz file, or a text encoder on text."""
    if (inputs is None) == (text is None):
        raise InputError("give --inputs FILE.npz (arrays by input name) or --text \"...\" (a text encoder), one of them.")
    if inputs is not None and out is None:
        raise InputError("--inputs needs --out FILE.npz for the outputs.")
    if inputs is not None and not inputs.is_file():
        raise InputError(f"--inputs '{inputs}' does not exist; save your arrays with np.savez(path, name=array).")
    feeds = _read_feeds(inputs) if inputs is not None else {}
    with load(bundle, backend, RunnerOptions(check_finite=check_finite), torch_original(source, bundle)) as deployment:
        if text is not None:
            results = deployment.read_texts(list(text))
            outputs = {f"{name}.{i}": value for i, r in enumerate(results) for name, value in r.outputs.items()}
            for r in results:
                typer.echo(f"{r.text}\n  " + r.summary.replace("\n", "\n  "))
        else:
            outputs = deployment.infer(feeds, role)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(out, **outputs)
        console.print(f"wrote {', '.join(f'{k} {list(v.shape)}' for k, v in outputs.items())} to {out}")
