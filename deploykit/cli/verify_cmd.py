"""`deploykit verify BUNDLE`: parity vs the torch original; exit 1 on failure (torch-free in golden mode)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..backends import RunnerOptions
from ..verify import verify
from . import SourceOption, app, console, torch_original


@app.command("verify")
def verify_cmd(
    bundle: Annotated[Path, typer.Argument(help="bundle directory")],
    backend: Annotated[str, typer.Option(help="backend under test: ort-cpu, ort-cuda, ort-trt or tensorrt")] = "ort-cpu",
    fp16: Annotated[bool, typer.Option(help="tensorrt / ort-trt: run fp16 engines")] = False,
    golden_only: Annotated[bool, typer.Option(help="only replay the golden vectors (no torch needed)")] = False,
    fresh: Annotated[bool, typer.Option(help="require fresh-input checks (fail if torch/source are missing)")] = False,
    seed: Annotated[int | None, typer.Option(help="seed of the fresh inputs (default: random, printed)")] = None,
    check_finite: Annotated[bool, typer.Option(help="fail on NaN/Inf in inputs or outputs")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the report as JSON")] = None,
    allow_uninformative: Annotated[bool, typer.Option(help="pass even when every output of a case is constant or "
                                                               "within atol of 0 (which any graph would match)")] = False,
    source: SourceOption = None,
) -> None:
    """Compare the bundle's graphs with the torch original: golden vectors, then fresh random inputs."""
    mode = False if golden_only else (True if fresh else None)
    model = torch_original(source, bundle)
    result = verify(bundle, backend, fresh=mode, seed=seed, model=model, allow_uninformative=allow_uninformative,
                    options=RunnerOptions(check_finite=check_finite, fp16=fp16))
    console.print(result.report.table(), highlight=False, markup=False)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False, markup=False)
    vacuous = result.report.uninformative()
    if vacuous:
        console.print(f"{'warning' if allow_uninformative else 'FAIL'}: {len(vacuous)} case(s) prove nothing "
                      f"({', '.join(vacuous[:4])}{', ...' if len(vacuous) > 4 else ''}): every reference output is "
                      "constant or within atol of 0, so any graph would match. Check the model (an untrained or "
                      "zero-initialized head?) or pass --allow-uninformative.", highlight=False, markup=False)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result.to_json(), indent=2))
    console.print("[bold green]PASS[/]" if result.passed else "[bold red]FAIL[/]")
    raise typer.Exit(0 if result.passed else 1)
