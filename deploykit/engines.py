"""build-engine: TensorRT engines built from a bundle's graphs (Polygraphy loaders), stored in the bundle.

Engines are named by GPU and TensorRT version (see `backends.tensorrt`), listed in the manifest's
`engines` with their optimization profile and sha256; the tensorrt backend refuses any other.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .backends.base import MAX_DEVICES
from .backends.tensorrt import ENGINES, TIMING_CACHE, Shapes, engine_name, gpu_identity, trt_modules
from .bundle import MANIFEST, Bundle, load_bundle, sha256_file
from .checks import INT32_MAX, check_int
from .errors import ExportError, InputError, choices
from .specs import GraphSpec

TRT_OPSET = 23  # the newest opset whose graphs engines are built from (opset 24 adds TensorScatter, the in-place cache)


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

    def __post_init__(self) -> None:
        check_int("--workspace", self.workspace_mib, 1, INT32_MAX, "MiB")
        check_int("--max-batch", self.max_batch, 1, INT32_MAX)
        check_int("--device-id", self.device_id, 0, MAX_DEVICES - 1)


def build_engines(bundle: str | os.PathLike[str] | Bundle, request: EngineRequest) -> list[dict[str, Any]]:
    """Build one engine per graph into BUNDLE/engines (timing cache shared), recording them in the manifest."""
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    roles = list(request.roles or b.graphs)
    unknown = set(roles) - set(b.graphs)
    if unknown:
        raise InputError(f"--role {choices(sorted(unknown))} is not in this bundle; choose from {choices(b.graphs)}.")
    if "fused" in b.manifest:
        raise InputError(f"bundle {b.path} was exported with --fuse: its opset-23 Attention / RMSNormalization / "
                         "RotaryEmbedding graphs are for onnxruntime; build TensorRT engines from an export without --fuse.")
    newer = sorted(r for r in roles if b.graphs[r].opset > TRT_OPSET)
    if newer:
        raise InputError(f"bundle {b.path} has graphs above opset {TRT_OPSET} ({choices(newer)}), such as the "
                         "TensorScatter cache writes of family gpt-inplace: they are for onnxruntime; build TensorRT "
                         "engines from an export as 'gpt'.")
    trt, ptrt = trt_modules()
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
