"""`deploykit compress BUNDLE INPUT --out FILE` and `deploykit decompress FILE --bundle BUNDLE --out OUTPUT`: lossless
coding of text under a language-model bundle (torch-free; runtimes/compress.py)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from ..api import load
from ..backends import RunnerOptions
from ..errors import InputError
from . import app, console
from .progress import progress_bar

Backend = Annotated[str, typer.Option(help="ort-cpu, ort-cuda or ort-trt; decompress with the one compress used")]
Threads = Annotated[int, typer.Option(min=1, max=1024, help="intra-op threads; decompress with the count compress used "
                                                              "(floating point differs between counts)")]
Force = Annotated[bool, typer.Option(help="replace --out if it exists")]


def _read(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise InputError(f"{what} '{path}' does not exist or is not a file.")
    return path.read_bytes()


def _write(out: Path, data: bytes, force: bool) -> None:
    """Write `out` whole or not at all (a temporary file renamed into place); never replace a file unless `force`."""
    if out.exists() and not force:
        raise InputError(f"--out '{out}' exists; pass --force to replace it, or choose another path.")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@app.command("compress")
def compress_cmd(
    bundle: Annotated[Path, typer.Argument(help="a language-model bundle (character LM, gpt, hf:DIR)")],
    input: Annotated[Path, typer.Argument(help="UTF-8 text file to compress")],  # noqa: A002
    out: Annotated[Path, typer.Option(help="compressed file to write")],
    backend: Backend = "ort-cpu",
    threads: Threads = 1,
    force: Force = False,
) -> None:
    """Compress a text file losslessly with a language model's next-token probabilities (range coding)."""
    data = _read(input, "INPUT")
    if out.exists() and not force:  # before minutes of coding
        raise InputError(f"--out '{out}' exists; pass --force to replace it, or choose another path.")
    with load(bundle, backend, RunnerOptions(threads=threads)) as dep, progress_bar("compressing") as step:
        result = dep.compress(data, step)
    _write(out, result.data, force)
    entropy = result.cross_entropy_bits / max(len(data), 1)
    console.print(f"{input}: {len(data)} bytes -> {len(result.data)} bytes ({result.bits_per_byte:.3f} bits/byte; "
                  f"the model's cross-entropy {entropy:.3f} bits/byte over {result.header.tokens} tokens) -> {out}")


@app.command("decompress")
def decompress_cmd(
    file: Annotated[Path, typer.Argument(help="a file `deploykit compress` wrote")],
    bundle: Annotated[Path, typer.Option(help="the bundle it was compressed with")],
    out: Annotated[Path, typer.Option(help="where to write the original")],
    backend: Backend = "ort-cpu",
    threads: Threads = 1,
    force: Force = False,
) -> None:
    """Restore the original of a compressed file (checked against its sha256 before anything is written)."""
    blob = _read(file, "FILE")
    with load(bundle, backend, RunnerOptions(threads=threads)) as dep, progress_bar("decompressing") as step:
        data = dep.decompress(blob, step)
    _write(out, data, force)
    console.print(f"{file}: {len(blob)} bytes -> {len(data)} bytes (sha256 checked) -> {out}")
