"""`deploykit compress BUNDLE INPUT --out FILE` and `deploykit decompress FILE --bundle BUNDLE --out OUTPUT`: lossless
coding under a bundle's own model (torch-free; runtimes/compress.py): text files under a language model, .npy arrays
of examples at their levels under PixelCNN, FVSBN/MADE/NADE and WaveNet bundles."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Annotated, BinaryIO

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


def _source(path: Path, what: str) -> Path:
    if not path.is_file():
        raise InputError(f"{what} '{path}' does not exist or is not a file.")
    return path


@contextmanager
def _atomic(out: Path, force: bool) -> Iterator[BinaryIO]:
    """A temporary file beside `out`, renamed to `out` when the block succeeds and removed otherwise (so `out` is
    written whole or not at all); never replaces a file unless `force`."""
    if out.exists() and not force:
        raise InputError(f"--out '{out}' exists; pass --force to replace it, or choose another path.")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
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
    the model's next-symbol probabilities (range coding), streaming in bounded memory."""
    with ExitStack() as stack:
        if _source(input, "INPUT").suffix == ".npy":
            try:
                data: BinaryIO | np.ndarray = np.load(input, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                raise InputError(f"INPUT '{input}' is not a readable .npy array ({str(exc)[:120]}).") from exc
        else:
            data = stack.enter_context(input.open("rb"))
        sink = stack.enter_context(_atomic(out, force))
        dep = stack.enter_context(load(bundle, backend, RunnerOptions(threads=threads)))
        result = dep.compress(data, stack.enter_context(progress_bar("compressing")), out=sink)
    size = result.header.size
    console.print(f"{input}: {size} bytes -> {result.length} bytes ({result.bits_per_byte:.3f} bits/byte; the "
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
    """Restore the original of a compressed file, streaming; its sha256 is checked before `--out` appears."""
    with _source(file, "FILE").open("rb") as source, _atomic(out, force) as sink, \
            load(bundle, backend, RunnerOptions(threads=threads)) as dep, progress_bar("decompressing") as step:
        dep.decompress(source, step, out=sink)
        written = sink.tell()
    console.print(f"{file}: {file.stat().st_size} bytes -> {written} bytes (sha256 checked) -> {out}")
