"""Runtimes: runners over onnxruntime and torch, and the loops that run on them. Never imports torch eagerly."""

from __future__ import annotations

from typing import Any

from ..bundle import Bundle
from ..errors import InputError, choices
from .base import Runner, RunnerOptions
from .ort import PROVIDERS, OrtRunner
from .torch_runner import TorchRunner, import_torch

BACKENDS = (*PROVIDERS, "tensorrt", "torch")

__all__ = ["BACKENDS", "OrtRunner", "Runner", "RunnerOptions", "TorchRunner", "make_runners"]


def torch_reference(bundle: Bundle, model: Any = None) -> dict[str, Any]:
    """Role -> torch module for a bundle: `model` if given, else rebuilt from the manifest's source."""
    import_torch()
    from ..exporters import torch_modules
    from ..sources import rebuild

    return torch_modules(bundle.family, model if model is not None else rebuild(bundle.source))


def make_runners(
    bundle: Bundle, backend: str = "ort-cpu", options: RunnerOptions | None = None, model: Any = None
) -> dict[str, Runner]:
    """One (inactive) runner per graph role of `bundle` on `backend`."""
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of {choices(BACKENDS)}.")
    graphs = bundle.graphs
    if backend == "torch":
        modules = torch_reference(bundle, model)
        return {role: TorchRunner(role, g.spec, modules[role], options) for role, g in graphs.items()}
    if backend == "tensorrt":
        from .tensorrt import TensorRTRunner

        return {role: TensorRTRunner(role, g.spec, bundle, options) for role, g in graphs.items()}
    return {role: OrtRunner(role, g.spec, g.path, backend, options) for role, g in graphs.items()}
