"""`deploykit prune SOURCE --sparsity S --method magnitude|structured --out CHECKPOINT` (and `--sweep`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import InputError
from . import app, console


def _fractions(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise InputError(f"--sweep {text!r}: expected sparsities separated by commas, e.g. 0.5,0.8,0.9,0.95.") from exc


@app.command("prune")
def prune_cmd(
    source: Annotated[str, typer.Argument(help="zoo:NAME[@CHECKPOINT], a deploykit checkpoint, or "
                                              "package.module:factory[@CHECKPOINT] with --family")],
    out: Annotated[Path, typer.Option(help="the pruned checkpoint (with --sweep: a folder)")],
    sparsity: Annotated[float, typer.Option(help="fraction of weights (magnitude) or of each layer's channels "
                                                 "(structured) to remove, in [0, 1)")] = 0.5,
    method: Annotated[str, typer.Option(help="magnitude (unstructured zeros) or structured (whole channels)")] = "magnitude",
    scope: Annotated[str, typer.Option(help="global: one threshold over all layers; layer: the same share in each")] = "global",
    norm: Annotated[int, typer.Option(help="structured: rank channels by their L1 (1) or L2 (2) norm")] = 1,
    finetune: Annotated[int, typer.Option(help="training steps after pruning, masks held (zoo training loop)")] = 0,
    round_to: Annotated[int, typer.Option(help="structured: keep channel counts multiples of this (8 or 16 suit "
                                               "onnxruntime's blocked CPU convolutions)")] = 1,
    sweep: Annotated[str | None, typer.Option(help="sparsities to sweep, e.g. 0.5,0.8,0.9,0.95: writes "
                                                   "pruned-S.pt, sweep.md, sweep.json and sweep.png to --out")] = None,
    iterations: Annotated[int, typer.Option(help="timed ORT calls per variant and batch (interleaved)")] = 100,
    family: Annotated[str | None, typer.Option(help="family (required for package.module:factory)")] = None,
    force: Annotated[bool, typer.Option(help="replace an existing --out")] = False,
) -> None:
    """Prune a model, fine-tune it, and report what it gained and cost on the deployed graphs; export the
    checkpoint with `deploykit export CHECKPOINT` (its manifest keeps the report)."""
    from ..pruning import PruneOptions, prune, sweep_table
    from ..pruning import sweep as run_sweep
    from ..sources import FACTORY

    options = PruneOptions(sparsity, method, scope, norm, finetune, round_to)
    if sweep is not None:
        reports = run_sweep(source, _fractions(sweep), options, out, force, iterations, family)
        console.print(sweep_table(reports), highlight=False, markup=False)
        console.print(f"wrote {out}/sweep.md, sweep.json, sweep.png and pruned-S.pt per sparsity", highlight=False)
        return
    report = prune(source, options, out, force, iterations, family=family)
    console.print(report.text(), highlight=False, markup=False)
    ref = source.partition("@")[0]
    again = f"{ref}@{out} --family {family}" if FACTORY.match(ref) and family else str(out)
    console.print(f"wrote {out}; export it with `deploykit export {again} --out BUNDLE`", highlight=False, markup=False)
