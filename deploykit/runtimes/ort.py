"""onnxruntime runner: CPU, CUDA or TensorRT execution provider."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, BundleError, choices
from ..specs import GraphSpec
from .base import Runner, RunnerOptions

# backend name -> (provider that must end up first in the session, providers asked for)
PROVIDERS = {
    "ort-cpu": ("CPUExecutionProvider", ["CPUExecutionProvider"]),
    "ort-cuda": ("CUDAExecutionProvider", ["CUDAExecutionProvider", "CPUExecutionProvider"]),
    "ort-trt": (
        "TensorrtExecutionProvider",
        ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    ),
}
INSTALL_HINT = {
    "ort-cuda": "install deploykit[gpu] (onnxruntime-gpu) on a machine with an NVIDIA GPU and CUDA",
    "ort-trt": "install deploykit[gpu] and TensorRT on a machine with an NVIDIA GPU",
}


class OrtRunner(Runner):
    """Runs an ONNX graph with an onnxruntime InferenceSession."""

    def __init__(
        self, role: str, spec: GraphSpec, path: Path, backend: str = "ort-cpu", options: RunnerOptions | None = None
    ) -> None:
        if backend not in PROVIDERS:
            raise BackendUnavailableError(f"unknown onnxruntime backend {backend!r}; choose one of {choices(PROVIDERS)}.")
        super().__init__(role, spec, options)
        self.backend = backend
        self.path = path
        self.session: Any = None

    def _activate(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailableError("onnxruntime is not installed; `pip install onnxruntime`.") from exc
        wanted, providers = PROVIDERS[self.backend]
        if wanted not in ort.get_available_providers():
            raise BackendUnavailableError(
                f"backend {self.backend!r} needs {wanted}, which this onnxruntime lacks "
                f"(available: {choices(ort.get_available_providers())}); {INSTALL_HINT[self.backend]}."
            )
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.inter_op_num_threads = 1
        so.log_severity_level = 3  # errors only: the exporter's unused-initializer warnings are noise to users
        if self.options.threads:
            so.intra_op_num_threads = self.options.threads
        opts = [{"device_id": str(self.options.device_id)} if p != "CPUExecutionProvider" else {} for p in providers]
        try:
            self.session = ort.InferenceSession(str(self.path), so, providers=providers, provider_options=opts)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/InvalidGraph types
            fix = (
                f"ORT-format graphs load only in the onnxruntime they were packed with or a newer one (this is "
                f"{ort.__version__}; see edge.onnxruntime in the manifest), and need every operator the pack listed"
                if self.path.suffix == ".ort" else "the file is corrupt or truncated, re-export the bundle"
            )
            raise BundleError(
                f"graph '{self.role}' ({self.path.name}) could not be loaded by onnxruntime: "
                f"{str(exc).splitlines()[0][:300]}; {fix}."
            ) from exc
        if self.session.get_providers()[0] != wanted:
            raise BackendUnavailableError(
                f"onnxruntime could not start {wanted} (session fell back to {self.session.get_providers()}); "
                f"{INSTALL_HINT[self.backend]}."
            )

    def _deactivate(self) -> None:
        self.session = None

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self.spec.output_names()
        return dict(zip(names, self.session.run(names, feeds)))
