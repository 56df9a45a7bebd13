"""The runner contract: activate / infer(dict) -> dict / deactivate, usable as a context manager."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np

from ..checks import check_int
from ..errors import DeploykitError
from ..specs import GraphSpec, check_finite

MAX_THREADS = 1024  # ORT and torch would try to start any count; past the cores, more only slows a run down
MAX_DEVICES = 1024


@dataclass(frozen=True)
class RunnerOptions:
    """Settings shared by every backend."""

    threads: int | None = None  # intra-op threads; None lets the backend choose
    device_id: int = 0  # GPU index for CUDA / TensorRT backends
    check_finite: bool = False  # reject NaN/Inf in inputs and outputs
    fp16: bool = False  # tensorrt / ort-trt: fp16 engines built from the fp32 graphs
    engine_cache: str | None = None  # ort-trt: directory where the TensorRT EP caches its engines
    io_binding: bool | None = None  # onnxruntime I/O binding; None: on for the GPU backends
    prepack: bool = True  # onnxruntime: repack weights for its kernels (faster calls; the packed copy is memory)
    arena: bool = True  # onnxruntime CPU: keep freed buffers for the next call (faster; the memory stays held)
    float64: bool = False  # torch: run the module in float64, outputs in the graph's dtypes (the fp64 parity rule)

    def __post_init__(self) -> None:
        check_int("--threads", self.threads or 0, 0, MAX_THREADS, "0: the backend's default")
        check_int("--device-id", self.device_id, 0, MAX_DEVICES - 1)


class Runner(ABC):
    """Runs one graph role. Inputs are checked against the graph's spec before the backend sees them."""

    backend: str = ""

    def __init__(self, role: str, spec: GraphSpec, options: RunnerOptions | None = None) -> None:
        self.role = role
        self.spec = spec
        self.options = options or RunnerOptions()
        self.active = False

    def activate(self) -> None:
        """Build the heavy state (session, module threads); idempotent."""
        if not self.active:
            self._activate()
            self.active = True

    def deactivate(self) -> None:
        """Release what activate built; idempotent."""
        if self.active:
            self._deactivate()
            self.active = False

    def infer(self, feeds: Mapping[str, Any], checked: bool = False, aliases: Mapping[str, str] | None = None
              ) -> dict[str, np.ndarray]:
        """Validate feeds, run the graph, return outputs by name.

        `checked=True` skips the spec check: for loops' inner steps, whose feeds are built from a
        validated first call and the graph's own outputs (it saves ~50 us per token).
        `aliases` (input -> output) lets a backend write each such output into its input's own array, which it then
        returns (an in-place cache; the graph must read that input only through the op that writes the output);
        a backend that cannot returns new arrays, as without it.
        """
        if not self.active:
            raise DeploykitError(f"{self.backend} runner for '{self.role}' is not active; use `with runner:` first.")
        where = f"{self.role} ({self.backend})"
        arrays = dict(feeds) if checked else self.spec.check_inputs(feeds, where)
        if self.options.check_finite:
            check_finite(arrays, f"{where} input")
        outputs = self._infer_in_place(arrays, aliases) if aliases else self._infer(arrays)
        if self.options.check_finite:
            check_finite(outputs, f"{where} output")
        return outputs

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.deactivate()

    @abstractmethod
    def _activate(self) -> None: ...

    @abstractmethod
    def _deactivate(self) -> None: ...

    @abstractmethod
    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def _infer_in_place(self, feeds: dict[str, np.ndarray], aliases: Mapping[str, str]) -> dict[str, np.ndarray]:
        """_infer with `aliases` (see infer); by default outputs are new arrays."""
        return self._infer(feeds)
