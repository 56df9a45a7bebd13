"""`deploykit sample BUNDLE --n 64 --seed 0 --out grid.png` (torch-free)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from ..images import save_samples
from ..runtimes import RunnerOptions
from ..runtimes.deployment import load
from . import app, console


@app.command("sample")
def sample_cmd(
    bundle: Annotated[Path, typer.Argument(help="generator bundle directory")],
    out: Annotated[Path, typer.Option(help="output: .png image grid or .npy array")],
    n: Annotated[int, typer.Option(help="number of samples")] = 64,
    seed: Annotated[int, typer.Option(help="seed of the latent noise (numpy PCG64)")] = 0,
    label: Annotated[int | None, typer.Option(help="class label for conditional generators (default: cycle)")] = None,
    backend: Annotated[str, typer.Option(help="ort-cpu, ort-cuda, ort-trt or torch")] = "ort-cpu",
    check_finite: Annotated[bool, typer.Option(help="fail on NaN/Inf in the samples")] = False,
) -> None:
    """Draw samples from a generator bundle and write them as an image grid or .npy."""
    with load(bundle, backend, RunnerOptions(check_finite=check_finite)) as deployment:
        images = deployment.sample(n, seed, None if label is None else np.asarray(label))
        path = save_samples(images, out, deployment.bundle.loop.get("value_range", (0.0, 1.0)))
    console.print(f"wrote {n} samples {list(images.shape[1:])} to {path}")
