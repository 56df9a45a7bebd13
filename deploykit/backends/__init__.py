"""Backends: the runner contract and its implementations (onnxruntime, TensorRT, torch). Never imports torch eagerly.

The torch backend runs modules its caller built (`deploykit.sources.torch_reference`), so nothing
here imports the exporters, the sources or the zoo.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..bundle import Bundle
from ..errors import InputError, choices
from .base import Runner, RunnerOptions
from .ort import PROVIDERS, OrtRunner
from .torch import TorchRunner

BACKENDS = (*PROVIDERS, "tensorrt", "torch")

__all__ = ["BACKENDS", "OrtRunner", "Runner", "RunnerOptions", "TorchRunner", "make_runners"]


def make_runners(
    bundle: Bundle, backend: str = "ort-cpu", options: RunnerOptions | None = None,
    modules: Mapping[str, Any] | None = None,
) -> dict[str, Runner]:
    """One (inactive) runner per graph role of `bundle` on `backend`; the torch backend runs `modules` (role -> module).

    Loop graphs built from another role's graph (`Graph.built_from`) run on onnxruntime only: torch has no module for
    them and TensorRT is not given them, so their loops run on the host there."""
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of {choices(BACKENDS)}.")
    graphs = bundle.graphs
    if backend in ("torch", "tensorrt"):
        graphs = {role: g for role, g in graphs.items() if g.built_from is None}
    if backend == "torch":
        if modules is None:
            raise InputError("the torch backend runs the original modules: build them with "
                             "deploykit.sources.torch_reference(bundle, model) and pass them as `modules`.")
        return {role: TorchRunner(role, g.spec, modules[role], options) for role, g in graphs.items()}
    if backend == "tensorrt":
        from .tensorrt import TensorRTRunner

        return {role: TensorRTRunner(role, g.spec, bundle, options) for role, g in graphs.items()}
    return {role: OrtRunner(role, g.spec, g.path, backend, options) for role, g in graphs.items()}
