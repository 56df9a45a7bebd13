"""Torch reference runner: runs the original nn.Module behind the same contract (torch imported lazily)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import BackendUnavailableError
from ..specs import GraphSpec
from .base import Runner, RunnerOptions


def import_torch() -> Any:
    """Import torch or raise BackendUnavailableError with the install hint."""
    try:
        import torch
    except ImportError as exc:
        raise BackendUnavailableError(
            "this needs torch, which is not installed here; `pip install deploykit[export]` "
            "(the ort-* backends and golden-mode verify work without it)."
        ) from exc
    return torch


class TorchRunner(Runner):
    """Runs a torch module (eager, CPU) on numpy feeds in graph-input order."""

    backend = "torch"

    def __init__(self, role: str, spec: GraphSpec, module: Any, options: RunnerOptions | None = None) -> None:
        super().__init__(role, spec, options)
        self.module = module
        self._saved_threads: int | None = None

    def _activate(self) -> None:
        torch = import_torch()
        self.module.eval()
        if self.options.threads:
            self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(self.options.threads)

    def _deactivate(self) -> None:
        if self._saved_threads is not None:
            import_torch().set_num_threads(self._saved_threads)
            self._saved_threads = None

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = import_torch()
        with torch.inference_mode():
            result = self.module(*(torch.from_numpy(feeds[n]) for n in self.spec.input_names()))
        values = result if isinstance(result, (tuple, list)) else (result,)
        return {n: v.detach().numpy() for n, v in zip(self.spec.output_names(), values)}
