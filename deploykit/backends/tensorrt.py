"""TensorRT backend: runs the engines `deploykit.engines` built into a bundle, with Polygraphy's TrtRunner.

Engines are specific to a GPU model and a TensorRT version, so each is stored under a name that
records both, e.g. `engines/denoiser.NVIDIA_H100_80GB_HBM3-sm90.trt10.8.0.fp16.engine`, and listed in
the manifest's `engines` with its optimization profile and sha256. The runner picks the engine
built for the GPU and TensorRT it finds; an engine from another GPU or version is refused with the
fix, never run. tensorrt, polygraphy and cuda-python are imported only here, only when used.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..bundle import Bundle, sha256_file
from ..errors import BackendUnavailableError, BundleError, InputError
from ..specs import GraphSpec
from .base import Runner, RunnerOptions

ENGINES = "engines"
TIMING_CACHE = "timing.cache"
Shapes = dict[str, dict[str, list[int]]]  # input -> {"min": [...], "opt": [...], "max": [...]}
INSTALL = "install TensorRT 10 with its Python bindings, polygraphy and cuda-python (`pip install deploykit[tensorrt]`) on a machine with an NVIDIA GPU"


def trt_modules() -> tuple[Any, Any]:
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


class TensorRTRunner(Runner):
    """Runs the engine built for this GPU and TensorRT version with Polygraphy's TrtRunner."""

    backend = "tensorrt"

    def __init__(self, role: str, spec: GraphSpec, bundle: Bundle, options: RunnerOptions | None = None) -> None:
        super().__init__(role, spec, options)
        self.bundle = bundle
        self.runner: Any = None
        self.shapes: Shapes = {}

    def _activate(self) -> None:
        trt, ptrt = trt_modules()
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

