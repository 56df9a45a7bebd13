"""`deploykit compress BUNDLE INPUT --out FILE` and `deploykit decompress FILE --bundle BUNDLE --out OUTPUT`: lossless
coding under a bundle's own model (torch-free; runtimes/compress.py): text files under a language model, .npy arrays
of examples at their levels under PixelCNN, FVSBN/MADE/NADE and WaveNet bundles."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Annotated

import numpy as np
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
    bundle: Annotated[Path, typer.Argument(help="a language-model bundle (character LM, gpt, hf:DIR) or a PixelCNN, "
                                                "FVSBN/MADE/NADE or WaveNet bundle")],
    input: Annotated[Path, typer.Argument(help="UTF-8 text file, or .npy of examples [N, ...] at the model's levels")],  # noqa: A002
    out: Annotated[Path, typer.Option(help="compressed file to write")],
    backend: Backend = "ort-cpu",
    threads: Threads = 1,
    force: Force = False,
) -> None:
    """Compress a text file (language models) or a .npy of examples (masked autoregressive models) losslessly with
    the model's next-symbol probabilities (range coding)."""
    data: bytes | np.ndarray = _read(input, "INPUT")
    if input.suffix == ".npy":
        try:
            data = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(f"INPUT '{input}' is not a readable .npy array ({str(exc)[:120]}).") from exc
    if out.exists() and not force:  # before minutes of coding
        raise InputError(f"--out '{out}' exists; pass --force to replace it, or choose another path.")
    with load(bundle, backend, RunnerOptions(threads=threads)) as dep, progress_bar("compressing") as step:
        result = dep.compress(data, step)
    _write(out, result.data, force)
    size = result.header.size
    console.print(f"{input}: {size} bytes -> {len(result.data)} bytes ({result.bits_per_byte:.3f} bits/byte; the "
                  f"model's cross-entropy {result.cross_entropy_bits / size:.3f} bits/byte over "
                  f"{result.header.symbols} symbols) -> {out}")


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
    if out.exists() and not force:  # before minutes of decoding
        raise InputError(f"--out '{out}' exists; pass --force to replace it, or choose another path.")
    with load(bundle, backend, RunnerOptions(threads=threads)) as dep, progress_bar("decompressing") as step:
        data = dep.decompress(blob, step)
    if isinstance(data, np.ndarray):  # an array comes back as the .npy it was given as
        buffer = io.BytesIO()
        np.save(buffer, data, allow_pickle=False)
        data = buffer.getvalue()
    _write(out, data, force)
    console.print(f"{file}: {len(blob)} bytes -> {len(data)} bytes (sha256 checked) -> {out}")
