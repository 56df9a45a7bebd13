"""TensorRT: engines built from a bundle's graphs (Polygraphy loaders), stored in the bundle, run by TrtRunner.

Engines are specific to a GPU model and a TensorRT version, so each is stored under a name that
records both, e.g. `engines/denoiser.NVIDIA_H100_80GB_HBM3-sm90.trt10.8.0.fp16.engine`, and listed in
the manifest's `engines` with its optimization profile and sha256. The runner picks the engine
built for the GPU and TensorRT it finds; an engine from another GPU or version is refused with the
fix, never run. tensorrt, polygraphy and cuda-python are imported only here, only when used.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..bundle import MANIFEST, Bundle, load_bundle, sha256_file
from ..errors import BackendUnavailableError, BundleError, ExportError, InputError, choices
from ..specs import GraphSpec
from .base import Runner, RunnerOptions

ENGINES = "engines"
TIMING_CACHE = "timing.cache"
Shapes = dict[str, dict[str, list[int]]]  # input -> {"min": [...], "opt": [...], "max": [...]}
INSTALL = "install TensorRT 10 with its Python bindings, polygraphy and cuda-python (`pip install deploykit[tensorrt]`) on a machine with an NVIDIA GPU"


def _modules() -> tuple[Any, Any]:
    """(tensorrt, polygraphy.backend.trt), or a clear error."""
    try:
        import tensorrt
        from polygraphy.backend import trt as polygraphy_trt
    except ImportError as exc:
        raise BackendUnavailableError(f"the tensorrt backend needs {exc.name}, which is not installed; {INSTALL}.") from exc
    return tensorrt, polygraphy_trt


def gpu_identity(device_id: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability 'smXY') of a CUDA device, through cuda-python."""
    try:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart
    except ImportError as exc:
        raise BackendUnavailableError(f"naming the GPU needs cuda-python, which is not installed; {INSTALL}.") from exc
    err, props = cudart.cudaGetDeviceProperties(device_id)
    if int(err) != 0:
        raise BackendUnavailableError(f"CUDA device {device_id} is not available (cudaGetDeviceProperties error {int(err)}).")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.strip("\x00 "), f"sm{props.major}{props.minor}"


def engine_name(role: str, gpu: str, capability: str, version: str, fp16: bool) -> str:
    """The file name that records what an engine was built for."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", gpu).strip("_")
    return f"{role}.{slug}-{capability}.trt{version}{'.fp16' if fp16 else ''}.engine"


def default_shapes(bundle: Bundle, spec: GraphSpec, max_batch: int = 64) -> Shapes:
    """Optimization profile from the manifest's dynamic axes: batch 1..max_batch, other dims from the
    rule minimum to 4x the largest checked size, optimum at the first check shape."""
    checks = bundle.check_shapes
    def bounds(dim: str) -> tuple[int, int, int]:
        rule = spec.dims.get(dim)
        low = rule.min if rule else 1
        opt = int(checks[0].get(dim, low))
        if dim == "batch":
            return 1, opt, max(max_batch, opt)
        step = rule.multiple_of if rule else 1
        high = 4 * max(int(c.get(dim, opt)) for c in checks)
        return low, opt, max(opt, high - high % step)

    shapes: Shapes = {}
    for t in spec.inputs:
        per_dim = [(d, d, d) if isinstance(d, int) else bounds(d) for d in t.shape]
        shapes[t.name] = {k: [b[i] for b in per_dim] for i, k in enumerate(("min", "opt", "max"))}
    return shapes


def parse_shapes(values: Sequence[str], option: str) -> dict[str, list[int]]:
    """['x:1x1x8x8', 't:1'] -> {'x': [1, 1, 8, 8], 't': [1]}."""
    out = {}
    for value in values:
        name, _, dims = value.partition(":")
        try:
            out[name] = [int(d) for d in dims.split("x")]
        except ValueError:
            raise InputError(f"{option} {value!r}: expected NAME:DxDx..., e.g. x:8x1x8x8.") from None
        if not name or any(d < 0 for d in out[name]):
            raise InputError(f"{option} {value!r}: expected NAME:DxDx... with dims >= 0, e.g. x:8x1x8x8.")
    return out


def check_profile(shapes: Shapes, feeds: Mapping[str, np.ndarray], role: str) -> None:
    """InputError when an input's shape lies outside the engine's optimization profile."""
    for name, array in feeds.items():
        low, high = shapes[name]["min"], shapes[name]["max"]
        if len(array.shape) != len(low) or any(s < lo or s > hi for s, lo, hi in zip(array.shape, low, high)):
            raise InputError(
                f"{role} (tensorrt): input '{name}' has shape {list(array.shape)}, outside the engine's profile "
                f"min {low} max {high}; rebuild with `deploykit build-engine --min-shapes/--max-shapes {name}:...`."
            )


def select_engine(entries: Sequence[Mapping[str, Any]], role: str, gpu: str, version: str, fp16: bool) -> Mapping[str, Any]:
    """The manifest entry of the engine for this role, GPU and TensorRT version; refuses any other."""
    mine = [e for e in entries if e["role"] == role]
    match = [e for e in mine if e["gpu"] == gpu and e["tensorrt"] == version and e["fp16"] == fp16]
    if match:
        return match[0]
    if not mine:
        raise BackendUnavailableError(f"the bundle has no TensorRT engine for '{role}'; build one here with "
                                      "`deploykit build-engine BUNDLE`" + (" --fp16" if fp16 else "") + ".")
    built = "; ".join(f"{e['gpu']} with TensorRT {e['tensorrt']}{' fp16' if e['fp16'] else ''}" for e in mine)
    raise BackendUnavailableError(
        f"the bundle's TensorRT engines for '{role}' were built for {built}; this is {gpu} with TensorRT {version}"
        f"{' (fp16 asked)' if fp16 else ''}. Engines only run on the GPU model and TensorRT version they were built "
        "for: rebuild here with `deploykit build-engine BUNDLE" + (" --fp16" if fp16 else "") + "`."
    )


@dataclass(frozen=True)
class EngineRequest:
    """What build-engine builds: precision, workspace, and per-input shape overrides."""

    fp16: bool = False
    workspace_mib: int = 1024
    max_batch: int = 64
    min_shapes: Mapping[str, list[int]] | None = None
    opt_shapes: Mapping[str, list[int]] | None = None
    max_shapes: Mapping[str, list[int]] | None = None
    roles: Sequence[str] | None = None  # default: every graph
    device_id: int = 0


def build_engines(bundle: str | os.PathLike[str] | Bundle, request: EngineRequest) -> list[dict[str, Any]]:
    """Build one engine per graph into BUNDLE/engines (timing cache shared), recording them in the manifest."""
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    roles = list(request.roles or b.graphs)
    unknown = set(roles) - set(b.graphs)
    if unknown:
        raise InputError(f"--role {choices(sorted(unknown))} is not in this bundle; choose from {choices(b.graphs)}.")
    trt, ptrt = _modules()
    gpu, capability = gpu_identity(request.device_id)
    version = trt.__version__
    folder = b.path / ENGINES
    folder.mkdir(exist_ok=True)
    cache = folder / TIMING_CACHE
    built = []
    for role in roles:
        graph = b.graphs[role]
        shapes = default_shapes(b, graph.spec, request.max_batch)
        for key, given in (("min", request.min_shapes), ("opt", request.opt_shapes), ("max", request.max_shapes)):
            for name, dims in (given or {}).items():
                if name in shapes:
                    shapes[name][key] = list(dims)
        profile = ptrt.Profile()
        for name, s in shapes.items():
            profile.add(name, min=s["min"], opt=s["opt"], max=s["max"])
        config = ptrt.CreateConfig(
            fp16=request.fp16, profiles=[profile], load_timing_cache=str(cache) if cache.exists() else None,
            memory_pool_limits={trt.MemoryPoolType.WORKSPACE: request.workspace_mib << 20},
        )
        try:
            engine = ptrt.engine_from_network(ptrt.network_from_onnx_path(str(graph.path)), config=config,
                                              save_timing_cache=str(cache))
        except Exception as exc:  # Polygraphy raises PolygraphyException with the parser's / builder's log
            raise ExportError(
                f"TensorRT could not build graph '{role}': {str(exc).splitlines()[0][:300]}. Build the other graphs "
                "with --role (e.g. a diffusion bundle's denoiser, whose host loop then runs on TensorRT)."
            ) from exc
        file = f"{ENGINES}/{engine_name(role, gpu, capability, version, request.fp16)}"
        tmp = b.path / (file + ".tmp")
        tmp.write_bytes(bytes(engine.serialize()))
        os.replace(tmp, b.path / file)
        built.append({"role": role, "file": file, "gpu": gpu, "compute_capability": capability, "tensorrt": version,
                      "fp16": request.fp16, "profile": shapes, "sha256": sha256_file(b.path / file),
                      "bytes": (b.path / file).stat().st_size})
    manifest = json.loads((b.path / MANIFEST).read_text())
    keep = [e for e in manifest.get("engines", []) if (e["role"], e["file"]) not in {(n["role"], n["file"]) for n in built}]
    manifest["engines"] = keep + built
    tmp = b.path / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, b.path / MANIFEST)
    return built


class TensorRTRunner(Runner):
    """Runs the engine built for this GPU and TensorRT version with Polygraphy's TrtRunner."""

    backend = "tensorrt"

    def __init__(self, role: str, spec: GraphSpec, bundle: Bundle, options: RunnerOptions | None = None) -> None:
        super().__init__(role, spec, options)
        self.bundle = bundle
        self.runner: Any = None
        self.shapes: Shapes = {}

    def _activate(self) -> None:
        trt, ptrt = _modules()
        gpu, _ = gpu_identity(self.options.device_id)
        entry = select_engine(self.bundle.manifest.get("engines", []), self.role, gpu, trt.__version__, self.options.fp16)
        path = self.bundle.path / entry["file"]
        if not path.is_file() or sha256_file(path) != entry["sha256"]:
            raise BundleError(f"engine {entry['file']} is missing or changed since it was built; rebuild it with "
                              "`deploykit build-engine BUNDLE`.")
        self.shapes = entry["profile"]
        self.runner = ptrt.TrtRunner(ptrt.engine_from_bytes(path.read_bytes()))
        self.runner.activate()

    def _deactivate(self) -> None:
        self.runner.deactivate()
        self.runner = None

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_profile(self.shapes, feeds, self.role)
        outputs = self.runner.infer(feed_dict=feeds)
        return {name: np.array(outputs[name]) for name in self.spec.output_names()}

