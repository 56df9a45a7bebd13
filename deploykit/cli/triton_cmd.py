"""`deploykit triton BUNDLE --out REPO`: a Triton Inference Server model repository (torch-free)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..triton import GRAPH_BACKENDS, TritonOptions, write_repository
from . import app, console


@app.command("triton")
def triton_cmd(
    bundle: Annotated[Path, typer.Argument(help="bundle to serve")],
    out: Annotated[Path, typer.Option(help="model repository directory to write")],
    name: Annotated[str | None, typer.Option(help="model name prefix (default: the bundle directory's name)")] = None,
    graph_backend: Annotated[str, typer.Option(help=f"graph models: {', '.join(GRAPH_BACKENDS)} (Triton's ORT backend, "
                                                    "or deploykit's ORT runner in the Python backend)")] = "onnxruntime",
    max_batch: Annotated[int, typer.Option(help="max_batch_size of graph models that batch")] = 64,
    queue_delay_us: Annotated[int, typer.Option(help="dynamic batching: max queue delay in microseconds")] = 500,
    graph_instances: Annotated[int, typer.Option(help="instances of each graph model")] = 1,
    loop_instances: Annotated[int, typer.Option(help="instances of the loop model (sampling loops at once)")] = 4,
    gpu: Annotated[bool, typer.Option(help="graph model instances on GPU (KIND_GPU)")] = False,
    max_samples: Annotated[int, typer.Option(help="most samples one loop request may ask for")] = 4096,
    force: Annotated[bool, typer.Option(help="replace a repository deploykit wrote at --out")] = False,
) -> None:
    """Write a model per graph plus the sampling loop as a Python-backend model calling them by BLS."""
    options = TritonOptions(name=name, graph_backend=graph_backend, max_batch=max_batch, queue_delay_us=queue_delay_us,
                            graph_instances=graph_instances, loop_instances=loop_instances, max_samples=max_samples,
                            gpu=gpu)
    record = write_repository(bundle, out, options, force)
    for role, g in record["graph_models"].items():
        batching = "dynamic batching" if g["batched"] else "whole requests"
        console.print(f"{g['model']:<28} graph '{role}' on {graph_backend}, {batching}", highlight=False)
    if record["loop_model"]:
        loop = record["loop_model"]
        where = "host loop, one BLS call per step" if loop["host_loop"] else "in-graph loop via BLS"
        console.print(f"{loop['model']:<28} {loop['kind']} sampling loop ({where}); inputs n, seed, labels, steps, "
                      "scheduler, eta, guidance -> samples", highlight=False)
    else:
        console.print(f"no loop model: a '{record['family']}' bundle's loop runs on the client.", highlight=False)
    console.print(f"serve with: tritonserver --model-repository {out}  (deploykit must be importable by Triton's Python)",
                  highlight=False)
