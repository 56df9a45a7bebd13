"""`deploykit inspect BUNDLE`: graphs, inputs/outputs with dynamic axes, opset, sizes (torch-free)."""

from __future__ import annotations

import json
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ..bundle import Bundle, load_bundle
from ..runtimes.kinds import OPTION_NAMES, kind_of
from . import app, console, print_fused

TEXT_OPTIONS = {"generate": "--prompt / --prompt-ids, --mode (top-p), --temperature, --top-k, --top-p, "
                             "--max-new-tokens (200), --stop, --host-loop",
                "translate": "--prompt or --prompt-ids, --beam (the bundle's default)"}


def sampling_options(b: Bundle) -> str:
    """The `deploykit sample` options this bundle's loop takes, with their defaults (None: the loop decides)."""
    kind = kind_of(b.loop)
    if kind.use in TEXT_OPTIONS:
        return TEXT_OPTIONS[kind.use]
    if kind.use != "sample":
        return f"nothing: a {kind.title} bundle is used through deploykit run / the Python API"
    shown = ["--n (one per --prompt)" if "prompts" in kind.option_fields() else "--n (64)", "--seed (0)"]
    for f in fields(kind.options) if kind.options else ():
        if f.name in OPTION_NAMES:
            default = f.default if f.default is not MISSING else None
            shown.append(f"{OPTION_NAMES[f.name]} ({'the loop decides' if default is None else default})")
    return ", ".join(shown)


@app.command("inspect")
def inspect_cmd(
    bundle: Annotated[Path, typer.Argument(help="bundle directory")],
    as_json: Annotated[bool, typer.Option("--json", help="print the manifest as JSON")] = False,
) -> None:
    """Show what a bundle holds; validates checksums on the way."""
    b = load_bundle(bundle)
    if as_json:
        console.print_json(json.dumps(b.manifest))
        return
    src = b.source
    console.print(
        f"[bold]{b.path}[/]  family={b.family}  schema={b.manifest['schema_version']}  "
        f"source={src.get('zoo') or src.get('ref') or src.get('class')} ({src['kind']})"
    )
    tools = b.manifest.get("tools", {})
    console.print("tools: " + ", ".join(f"{k} {v}" for k, v in tools.items()), highlight=False, markup=False)
    print_fused(b.manifest)
    table = Table("role", "io", "name", "dtype", "shape", "file / rules")
    for role, g in b.graphs.items():
        rules = ", ".join(f"{d} {r.text()}" for d, r in g.spec.dims.items())
        built = f"  the whole loop, built from {g.built_from}" if g.built_from else ""
        table.add_row(role, "", "", "", "", f"{g.path.name}  {g.size_bytes / 1024:.1f} KiB  opset {g.opset}  {rules}{built}")
        for io, specs in (("in", g.spec.inputs), ("out", g.spec.outputs)):
            for s in specs:
                close = "]" if isinstance(s.high, str) else ")"  # a dim name bounds values inclusively
                extra = "" if s.high is None else f"values in [{s.low}, {s.high}{close}"
                table.add_row("", io, s.name, s.dtype, escape(s.shape_text()), extra)
    console.print(table)
    console.print(f"deploykit sample takes: {sampling_options(b)}", highlight=False, markup=False)
    pruning = src.get("pruning")
    if isinstance(pruning, dict) and isinstance(pruning.get("report"), dict):
        report = pruning["report"]
        metric = report.get("metric") or {}
        changes = ", ".join(f"{k} {v:.4g} -> {metric['after'].get(k, float('nan')):.4g}"
                            for k, v in (metric.get("before") or {}).items())
        console.print(f"pruned: {pruning.get('method')} ({pruning.get('scope')}), sparsity {pruning.get('sparsity')}, "
                      f"fine-tuned {pruning.get('finetune')} steps; parameters {report['params']['before']:,} -> "
                      f"{report['params']['nonzero_after']:,} nonzero; {changes or 'no zoo metric'}",
                      highlight=False, markup=False)
    console.print(
        f"tolerance atol={b.tolerance.atol:g} rtol={b.tolerance.rtol:g}, else fp64 budget x{b.tolerance.multiple:g} "
        f"or magnitude {b.tolerance.magnitude:g}; export parity {b.manifest.get('parity', 'not recorded')}; "
        f"loop { {k: _brief(v) for k, v in b.loop.to_json().items()} }; "
        f"golden cases: {', '.join(f'{c.role} {c.name}' for c in b.golden)}",
        highlight=False,
        markup=False,
    )


def _brief(value: object) -> object:
    """A loop setting as printed: a long list (a vocabulary of 50k tokens) by its length only."""
    return f"[{len(value)} items]" if isinstance(value, list) and len(value) > 16 else value
