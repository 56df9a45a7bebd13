"""`deploykit quantize BUNDLE --mode fp16|int8-dynamic|int8-static|int4 --out NEW` (torch-free)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..bundle import load_bundle
from ..int4 import Int4Options
from ..precision import QUANT_MODES, Labelled, accuracy_table, quantize
from . import app, console
from .progress import phase_line


def _zoo_test_split(bundle: Path) -> Labelled | None:
    """The zoo's held-out split for a bundle exported from a zoo classifier (needs the zoo: torch, scikit-learn)."""
    zoo = load_bundle(bundle).source.get("zoo")
    if zoo is None:
        return None
    try:
        from ..models import test_split
    except ImportError:  # a runtime-only install: accuracy falls back to top-1 agreement with fp32
        return None
    return test_split(zoo)


@app.command("quantize")
def quantize_cmd(
    bundle: Annotated[Path, typer.Argument(help="fp32 bundle to convert (left untouched)")],
    mode: Annotated[str, typer.Option(help=f"precision: {', '.join(QUANT_MODES)}")],
    out: Annotated[Path, typer.Option(help="directory of the new bundle")],
    calibration: Annotated[int, typer.Option(help="int8-static: calibration batches (seeded, at the check shapes; 1..4096)")] = 32,
    force: Annotated[bool, typer.Option(help="replace an existing bundle at --out")] = False,
    block_size: Annotated[int | None, typer.Option(help="int4: weights per scale (16, 32, 64, 128 or 256) [default: 32]")] = None,
    asymmetric: Annotated[bool, typer.Option(help="int4: a zero point per block (default: symmetric blocks)")] = False,
    accuracy_level: Annotated[int | None, typer.Option(help="int4: lowest compute precision, 0 unset, 1 fp32, 2 fp16, "
                                                       "3 bf16, 4 int8 (fastest on CPU) [default: 4]")] = None,
) -> None:
    """Write a new bundle with fp16, int8 or int4 graphs; its tolerance is widened from the error measured here."""
    given = block_size is not None or asymmetric or accuracy_level is not None
    defaults = Int4Options()
    int4 = Int4Options(defaults.block_size if block_size is None else block_size, not asymmetric,
                       defaults.accuracy_level if accuracy_level is None else accuracy_level) if given else None
    with phase_line(f"quantizing {bundle} to {mode}") as on_phase:
        result = quantize(bundle, mode, out, calibration, force, _zoo_test_split(bundle), on_phase, int4)
    precision = result.manifest["precision"]
    sizes = ", ".join(f"{role} {g.size_bytes / 1024:.1f} KiB" for role, g in result.graphs.items())
    console.print(
        f"wrote {mode} bundle {out}: {sizes}; max abs error vs torch on the golden inputs "
        f"{precision['measured_max_abs']:.2e}, tolerance now atol={result.tolerance.atol:.2e}",
        highlight=False,
    )
    console.print("accuracy change:\n" + accuracy_table(precision["accuracy"]), highlight=False, markup=False)
    if mode == "fp16":
        console.print("note: fp16 graphs are for GPU execution providers (ort-cuda, ort-trt, TensorRT); onnxruntime's "
                      "CPU provider runs most fp16 operators through casts, so they are usually slower than fp32 "
                      "there. For CPU, use int8-dynamic.", highlight=False, markup=False)
