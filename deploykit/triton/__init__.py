"""Serving through NVIDIA Triton Inference Server: a model repository written from a bundle.

`write_repository(bundle, out)` lays out::

    REPO/deploykit-triton.json          what was written, from which bundle (Triton ignores root files)
    REPO/<name>_<role>/config.pbtxt     one model per graph: Triton's onnxruntime backend runs it natively
    REPO/<name>_<role>/1/model.onnx     (graph_backend="python": deploykit's GraphModel runs it with ORT)
    REPO/<name>/config.pbtxt            the sampling loop: a Python-backend model (deploykit's LoopModel)
    REPO/<name>/1/model.py              whose every graph call is a BLS request to the graph models,
    REPO/<name>/1/bundle/               so concurrent loops share the graph models' dynamic batching

Graph models whose inputs and outputs all lead with the `batch` dim get `max_batch_size` and
dynamic batching; others (a sampler over `steps`, recurrent state [layers, batch, ...]) take
whole requests. Rank-1 batch tensors (labels, timesteps) travel as [batch, 1] and are reshaped
to [batch] for the model, as Triton requires at least one non-batch dim.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..backends import make_runners
from ..bundle import Bundle, load_bundle, staging
from ..checks import INT32_MAX, check_int
from ..errors import InputError, choices
from ..runtimes.deployment import Deployment
from ..runtimes.kinds import kind_of
from ..specs import GraphSpec, TensorSpec

MARKER = "deploykit-triton.json"
GRAPH_BACKENDS = ("onnxruntime", "python")
TRITON_TYPES = {
    "float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "int64": "TYPE_INT64",
    "int32": "TYPE_INT32", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL",
}
# loop request inputs: name -> (Triton type, dims, what it sets); all but n are optional
LOOP_INPUTS = {
    "n": ("TYPE_INT32", [1], "number of samples"),
    "seed": ("TYPE_INT64", [1], "noise seed (default 0)"),
    "labels": ("TYPE_INT64", [-1], "class per sample (conditional bundles; default: cycle 0..K-1)"),
    "steps": ("TYPE_INT32", [1], "loop steps (diffusion, Gibbs, WaveNet, VRNN)"),
    "scheduler": ("TYPE_STRING", [1], "diffusion scheduler"),
    "eta": ("TYPE_FP32", [1], "DDIM eta"),
    "karras": ("TYPE_BOOL", [1], "Karras sigmas (euler, euler-a, heun, dpm++2m)"),
    "clipped_model_output": ("TYPE_BOOL", [1], "DDIM: eps re-derived from the clipped x0"),
    "guidance": ("TYPE_FP32", [1], "classifier-free guidance scale"),
}


MAX_INSTANCES = 1024  # each Python-backend instance is a process of its own


@dataclass(frozen=True, kw_only=True)
class TritonOptions:
    """How the repository is configured."""

    name: str | None = None  # model name prefix; default: the bundle directory's name
    graph_backend: str = "onnxruntime"  # Triton-native ORT backend, or deploykit's GraphModel (Python backend)
    max_batch: int = 64  # max_batch_size of batchable graph models
    queue_delay_us: int = 500  # dynamic batching: how long a request may wait for others
    graph_instances: int = 1  # instances of each graph model
    loop_instances: int = 4  # instances of the loop model = sampling loops running at once
    max_samples: int = 4096  # most samples one loop request may ask for (larger ones get a 400 up front)
    gpu: bool = False  # graph model instances on GPU (KIND_GPU) instead of CPU

    def __post_init__(self) -> None:
        for option, value, low, high in (("--max-batch", self.max_batch, 1, INT32_MAX),
                                         ("--queue-delay-us", self.queue_delay_us, 0, INT32_MAX),
                                         ("--graph-instances", self.graph_instances, 1, MAX_INSTANCES),
                                         ("--loop-instances", self.loop_instances, 1, MAX_INSTANCES),
                                         ("--max-samples", self.max_samples, 1, INT32_MAX)):
            check_int(option, value, low, high)


def batchable(spec: GraphSpec) -> bool:
    """Whether every input and output leads with the `batch` dim (so requests can be concatenated)."""
    return all(t.shape and t.shape[0] == "batch" for t in (*spec.inputs, *spec.outputs))


def to_wire(tensor: TensorSpec, array: np.ndarray, batched: bool) -> np.ndarray:
    """The shape Triton declares: rank-1 batch tensors of a batched model travel as [batch, 1]."""
    return array.reshape(-1, 1) if batched and len(tensor.shape) == 1 else array


def from_wire(tensor: TensorSpec, array: np.ndarray, batched: bool) -> np.ndarray:
    """Inverse of to_wire."""
    return array.reshape(-1) if batched and len(tensor.shape) == 1 else array


def model_name(text: str) -> str:
    """A Triton-safe model name."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def _tensor(t: TensorSpec, batched: bool) -> str:
    dims = [d if isinstance(d, int) else -1 for d in (t.shape[1:] if batched else t.shape)]
    if t.dtype not in TRITON_TYPES:
        raise InputError(f"tensor '{t.name}' has dtype {t.dtype}, which has no Triton type; expected one of "
                         f"{choices(TRITON_TYPES)}.")
    reshape = " reshape: { shape: [ ] }" if not dims else ""
    return f'{{ name: "{t.name}" data_type: {TRITON_TYPES[t.dtype]} dims: [ {", ".join(map(str, dims or [1]))} ]{reshape} }}'


def _parameters(values: dict[str, str]) -> str:
    return "\n".join(f'parameters {{ key: "{k}" value {{ string_value: {json.dumps(v)} }} }}' for k, v in values.items())


def graph_config(name: str, spec: GraphSpec, options: TritonOptions, parameters: dict[str, str]) -> str:
    """config.pbtxt of one graph model."""
    batched = batchable(spec)
    backend = 'platform: "onnxruntime_onnx"' if options.graph_backend == "onnxruntime" else 'backend: "python"'
    kind = "KIND_GPU" if options.gpu else "KIND_CPU"
    lines = [
        f'name: "{name}"',
        backend,
        f"max_batch_size: {options.max_batch if batched else 0}",
        "input [\n  " + ",\n  ".join(_tensor(t, batched) for t in spec.inputs) + "\n]",
        "output [\n  " + ",\n  ".join(_tensor(t, batched) for t in spec.outputs) + "\n]",
        f"instance_group [ {{ count: {options.graph_instances} kind: {kind} }} ]",
    ]
    if batched:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {options.queue_delay_us} }}")
    if parameters:
        lines.append(_parameters(parameters))
    return "\n".join(lines) + "\n"


def loop_config(name: str, output: np.ndarray, options: TritonOptions, parameters: dict[str, str]) -> str:
    """config.pbtxt of the loop model: whole requests (n, seed, ...) in, `samples` out."""
    inputs = ",\n  ".join(
        f'{{ name: "{k}" data_type: {t} dims: [ {dims[0]} ]{"" if k == "n" else " optional: true"} }}'
        for k, (t, dims, _) in LOOP_INPUTS.items()
    )
    dims = ", ".join(["-1"] * output.ndim)
    return "\n".join([
        f'name: "{name}"',
        'backend: "python"',
        "max_batch_size: 0",
        f"input [\n  {inputs}\n]",
        f'output [\n  {{ name: "samples" data_type: {TRITON_TYPES[str(output.dtype)]} dims: [ {dims} ] }}\n]',
        f"instance_group [ {{ count: {options.loop_instances} kind: KIND_CPU }} ]",
        _parameters(parameters),
    ]) + "\n"


MODEL_PY = '''"""Triton Python-backend model written by `deploykit triton`; needs deploykit in Triton's Python."""

from deploykit.triton.models import {cls} as TritonPythonModel  # noqa: F401
'''


def write_repository(
    bundle: str | os.PathLike[str] | Bundle, out: str | os.PathLike[str], options: TritonOptions | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Write a Triton model repository for `bundle` at `out`; returns what deploykit-triton.json records."""
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    options = options or TritonOptions()
    if options.graph_backend not in GRAPH_BACKENDS:
        raise InputError(f"--graph-backend {options.graph_backend!r}: choose one of {choices(GRAPH_BACKENDS)}.")
    if "edge" in b.manifest:
        raise InputError(f"bundle {b.path} is packed for edge devices (ORT format); write a repository from the "
                         "ONNX bundle it came from.")
    name = model_name(options.name or b.path.name)
    kind = kind_of(b.loop)
    record: dict[str, Any] = {
        "bundle": str(b.path.resolve()), "family": b.family, "options": asdict(options) | {"name": name},
        "graph_models": {}, "loop_model": None,
    }
    models = {role: model_name(f"{name}_{role}") for role in b.graphs}
    has_loop = kind.sample is not None
    # one copy of the bundle for the Python-backend models, inside a model directory (Triton treats
    # every directory at the root as a model)
    bundle_dir = f"{name if has_loop else next(iter(models.values()))}/1/bundle"
    with staging(Path(out), force, MARKER) as tmp:
        if has_loop or options.graph_backend == "python":
            shutil.copytree(b.path, tmp / bundle_dir)
        for role, graph in b.graphs.items():
            gname = models[role]
            version = tmp / gname / "1"
            version.mkdir(parents=True, exist_ok=True)
            params: dict[str, str] = {}
            if options.graph_backend == "onnxruntime":
                entry = b.manifest["graphs"][role]
                shutil.copy2(b.path / entry["file"], version / "model.onnx")
                for extra in entry.get("external_data", []):  # referenced by file name, beside the graph
                    shutil.copy2(b.path / extra["file"], version / Path(extra["file"]).name)
            else:
                (version / "model.py").write_text(MODEL_PY.format(cls="GraphModel"))
                params = {"bundle": os.path.relpath(tmp / bundle_dir, tmp / gname), "role": role}
            (tmp / gname / "config.pbtxt").write_text(graph_config(gname, graph.spec, options, params))
            record["graph_models"][role] = {"model": gname, "batched": batchable(graph.spec)}
        if has_loop:
            with Deployment(b, make_runners(b)) as local:
                probe = local.sample(1, 0, local.options(**kind.quick))
            host = bool(kind.serving.get("host"))  # per-step calls batch across concurrent loops; in-graph elsewhere
            params = {"bundle": "1/bundle", "graphs": json.dumps(record["graph_models"]), "host_loop": str(host).lower(),
                      "max_samples": str(options.max_samples)}
            (tmp / name / "1" / "model.py").write_text(MODEL_PY.format(cls="LoopModel"))
            (tmp / name / "config.pbtxt").write_text(loop_config(name, probe, options, params))
            record["loop_model"] = {"model": name, "kind": kind.name, "host_loop": host, "output_dtype": str(probe.dtype)}
        (tmp / MARKER).write_text(json.dumps(record, indent=2) + "\n")
    return record
