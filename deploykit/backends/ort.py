"""onnxruntime runner: CPU, CUDA or TensorRT execution provider."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, BundleError, InputError, choices, optional_import
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
        self, role: str, spec: GraphSpec, path: Path, backend: str = "ort-cpu", options: RunnerOptions | None = None,
    ) -> None:
        if backend not in PROVIDERS:
            raise BackendUnavailableError(f"unknown onnxruntime backend {backend!r}; choose one of {choices(PROVIDERS)}.")
        super().__init__(role, spec, options)
        self.backend = backend
        self.path = path
        self.session: Any = None

    def _activate(self) -> None:
        ort = optional_import("onnxruntime", "onnxruntime is not installed; `pip install onnxruntime`.")
        wanted, providers = PROVIDERS[self.backend]
        if (self.options.fp16 or self.options.engine_cache) and self.backend != "ort-trt":
            raise InputError(f"fp16 and engine_cache are TensorRT options (backends tensorrt and ort-trt), not "
                             f"{self.backend}; for fp16 there, `deploykit quantize --mode fp16`.")
        if wanted not in ort.get_available_providers():
            raise BackendUnavailableError(
                f"backend {self.backend!r} needs {wanted}, which this onnxruntime lacks "
                f"(available: {choices(ort.get_available_providers())}); {INSTALL_HINT[self.backend]}."
            )
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.inter_op_num_threads = 1
        so.log_severity_level = 4  # fatal only: failures come back as exceptions (wrapped with the role), and its log
        # lines (coloured, repeating them) and the exporter's unused-initializer warnings are noise to users
        if self.options.threads:
            so.intra_op_num_threads = self.options.threads
        if not self.options.prepack:  # external data is then mapped, not copied
            so.add_session_config_entry("session.disable_prepacking", "1")
        so.enable_cpu_mem_arena = self.options.arena
        opts = [provider_options(p, self.options) for p in providers]
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

        gpu = self.backend != "ort-cpu"
        self.binding = self.options.io_binding if self.options.io_binding is not None else gpu
        self.device = ("cuda", self.options.device_id) if gpu else ("cpu", 0)
        self.resident: dict[int, tuple[np.ndarray, Any]] = {}
        self.in_place: tuple[Any, dict[str, np.ndarray], dict[str, Any], list[str]] | None = None  # see _infer_in_place
        self.rebound = 0  # inputs taken from device memory instead of copied from the host (I/O binding)

    def _deactivate(self) -> None:
        self.session = None
        self.resident = {}
        self.in_place = None

    def _infer_in_place(self, feeds: dict[str, np.ndarray], aliases: Mapping[str, str]) -> dict[str, np.ndarray]:
        if self.binding:  # outputs kept in device memory: host arrays cannot be written in place
            return self._infer(feeds)
        own = {name: feeds[name] if feeds[name].flags.c_contiguous and feeds[name].flags.writeable
               else np.array(feeds[name], order="C") for name in aliases}  # bound by address: plain C arrays only
        if self.in_place is None:  # one binding for the whole loop: rebinding 2 x layers buffers a step costs ~5 %
            self.in_place = (self.session.io_binding(), {}, self._fresh_shapes(aliases), [])
        binding, bound, shapes, order = self.in_place

        def bind_output(name: str, *where: Any) -> None:
            binding.bind_output(name, *where)
            if name not in order:  # get_outputs() lists outputs in the order first bound
                order.append(name)

        fresh = {}  # outputs of a new shape each run (logits): into arrays made here where the inputs give the shape
        for name, (dtype, shape) in shapes.items():
            if shape is None:
                bind_output(name, "cpu")
                continue
            array = fresh[name] = np.empty([d if isinstance(d, int) else feeds[d[0]].shape[d[1]] for d in shape], dtype)
            bind_output(name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)
        for name, array in feeds.items():
            if name not in own:
                binding.bind_cpu_input(name, array)
            elif bound.get(name) is not own[name]:  # a new or grown buffer: onnxruntime reads it, the graph writes it
                array = bound[name] = own[name]  # held while bound: its memory stays valid
                binding.bind_input(name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)
                bind_output(aliases[name], "cpu", 0, array.dtype, array.shape, array.ctypes.data)
        self.session.run_with_iobinding(binding)
        if len(fresh) < len(shapes):  # onnxruntime allocated them: every output gets wrapped to reach those
            outputs = dict(zip(order, binding.get_outputs()))
            fresh |= {name: outputs[name].numpy() for name in shapes if name not in fresh}
        return {aliases[name]: array for name, array in own.items()} | fresh

    def _fresh_shapes(self, aliases: Mapping[str, str]) -> dict[str, tuple[str, list[int | tuple[str, int]] | None]]:
        """Each output not aliased to an input (the loop's fixed map): its dtype and its shape as fixed sizes and
        (input, axis) pairs where an input has the same symbolic dim, or None where some dim is the graph's own."""
        where = {d: (spec.name, axis) for spec in self.spec.inputs for axis, d in enumerate(spec.shape)
                 if isinstance(d, str)}
        return {spec.name: (spec.dtype, [d if isinstance(d, int) else where[d] for d in spec.shape]
                            if all(isinstance(d, int) or d in where for d in spec.shape) else None)
                for spec in self.spec.outputs if spec.name not in aliases.values()}

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self.spec.output_names()
        if not self.binding:
            return dict(zip(names, self.session.run(names, feeds)))
        # I/O binding: outputs stay in device memory as OrtValues; a host loop that feeds an output
        # straight back (recurrent state, KV cache) gets it rebound from there, with no host->device copy
        binding = self.session.io_binding()
        for name, array in feeds.items():
            kept = self.resident.get(id(array))
            if kept is not None and kept[0] is array:
                binding.bind_ortvalue_input(name, kept[1])
                self.rebound += 1
            else:
                binding.bind_cpu_input(name, array)
        for name in names:
            binding.bind_output(name, *self.device)
        self.session.run_with_iobinding(binding)
        values = binding.get_outputs()
        outputs = {name: value.numpy() for name, value in zip(names, values)}
        self.resident = {id(array): (array, value) for array, value in zip(outputs.values(), values)}
        return outputs


def provider_options(provider: str, options: RunnerOptions) -> dict[str, str]:
    """onnxruntime provider options: device id for CUDA; fp16 and the engine cache for TensorRT."""
    if provider == "CPUExecutionProvider":
        return {}
    out = {"device_id": str(options.device_id)}
    if provider == "TensorrtExecutionProvider":
        out |= {"trt_fp16_enable": str(options.fp16), "trt_timing_cache_enable": "True"}
        if options.engine_cache:
            out |= {"trt_engine_cache_enable": "True", "trt_engine_cache_path": options.engine_cache}
    return out
