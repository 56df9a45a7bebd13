"""`deploykit export SOURCE --out DIR` (needs deploykit[export])."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..onnx_refs import EXTERNAL_DATA_THRESHOLD
from . import app, console, print_fused
from .progress import phase_line, progress_bar


@app.command("export")
def export_cmd(
    source: Annotated[str, typer.Argument(help="zoo:NAME[@CHECKPOINT], hf:DIR (a save_pretrained folder), a checkpoint "
                                              "path, or package.module:factory")],
    out: Annotated[Path, typer.Option(help="bundle directory to create")],
    family: Annotated[str | None, typer.Option(help="family (required for package.module:factory)")] = None,
    force: Annotated[bool, typer.Option(help="replace an existing bundle at --out")] = False,
    external_data_mb: Annotated[float, typer.Option(
        help="graphs with more weights than this (MiB) keep them in external-data files in the bundle "
             "(onnxruntime maps them; quantize reads them one at a time)")] = EXTERNAL_DATA_THRESHOLD / (1 << 20),
    tokenizer: Annotated[Path | None, typer.Option(help="language models: a tokenizer.json the bundle carries "
                                                        "for text generation")] = None,
    context: Annotated[int | None, typer.Option(help="hf:DIR language models: the positions the bundle serves "
                                                     "(required where the config has no limit, e.g. Bloom's ALiBi)")] = None,
    fuse: Annotated[bool, typer.Option(help="write attention, RMS norm and rotary embeddings as single ONNX opset-23 "
                                            "operators: faster on onnxruntime, which must support opset 23 (not "
                                            "for TensorRT engines)")] = False,
) -> None:
    """Export a model to an ONNX bundle; fails, writing nothing, if ORT does not match torch."""
    from ..bundle import check_destination
    from ..errors import InputError
    from ..exporters import export
    from ..sources import resolve

    if not 0 <= external_data_mb < float("inf"):
        raise InputError(f"--external-data-mb is {external_data_mb}, expected a size in MiB >= 0 (0: always external).")
    check_destination(out, force)
    with progress_bar(f"training {source} (first use)") as on_step:
        resolved = resolve(source, family, on_step, context)
    with phase_line(f"exporting {source}") as on_phase:
        bundle = export(resolved.model, resolved.family, out, force=force, source=resolved.source,
                        external_threshold=int(external_data_mb * (1 << 20)), tokenizer=tokenizer or resolved.tokenizer,
                        on_phase=on_phase, fuse=fuse)
    roles = ", ".join(f"{r} ({g.size_bytes / 1024:.0f} KiB)" for r, g in bundle.graphs.items())
    console.print(f"exported {source} as '{bundle.family}' to {out}: {roles}; {len(bundle.golden)} golden cases")
    print_fused(bundle.manifest)
