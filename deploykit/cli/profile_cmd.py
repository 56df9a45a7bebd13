"""`deploykit profile BUNDLE --backend ort-cpu --backend torch --batch 1 --batch 32` (torch-free for ort-*)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..bundle import load_bundle
from ..profile import profile
from . import SourceOption, app, console, torch_original


@app.command("profile")
def profile_cmd(
    bundle: Annotated[Path, typer.Argument(help="bundle directory")],
    backend: Annotated[list[str] | None, typer.Option(help="repeatable; default: ort-cpu and torch")] = None,
    batch: Annotated[list[int] | None, typer.Option(help="repeatable; default: 1 and 32")] = None,
    iterations: Annotated[int, typer.Option(help="timed iterations per backend and batch")] = 200,
    warmup: Annotated[int, typer.Option(help="untimed iterations first")] = 20,
    threads: Annotated[int, typer.Option(help="intra-op threads, the same for every backend (0: backend default)")] = 1,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the report (with raw latencies) as JSON")] = None,
    plot: Annotated[Path | None, typer.Option(help="write a PNG of the latency distributions")] = None,
    against: Annotated[Path | None, typer.Option(help="another bundle of the same model (e.g. the fp32 source of a "
                                                      "quantized bundle) timed beside it, with the speed ratio")] = None,
    source: SourceOption = None,
) -> None:
    """Latency p50/p90/p99/mean and throughput per backend and batch, with the speedup over torch eager."""
    report = profile(bundle, backend or ["ort-cpu", "torch"], batch or [1, 32], iterations, warmup, threads or None,
                     torch_original(source, bundle), against)
    console.print(report.table(), highlight=False, markup=False)
    recorded = load_bundle(bundle).manifest.get("precision", {}).get("source_bundle")
    if against is None and isinstance(recorded, str):  # shown, never opened: the manifest is untrusted
        console.print(f"note: quantized from {recorded[:200]!r}; add --against PATH to time the fp32 bundle beside it",
                      highlight=False, markup=False)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report.to_json(), indent=2))
    if plot:
        console.print(f"plot: {report.plot(plot)}")
