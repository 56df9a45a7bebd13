"""`deploykit.load`: a validated bundle with runners on one backend."""

from __future__ import annotations

import os
from typing import Any

from .backends import RunnerOptions, make_runners
from .bundle import load_bundle
from .runtimes.deployment import Deployment


def load(
    path: str | os.PathLike[str],
    backend: str = "ort-cpu",
    options: RunnerOptions | None = None,
    model: Any = None,
) -> Deployment:
    """Validate a bundle and build its runners on `backend` (ort-cpu, ort-cuda, ort-trt, tensorrt or torch).

    The torch backend runs `model` (or the source the manifest records, rebuilt), exactly as exported.
    """
    bundle = load_bundle(path)
    modules = None
    if backend == "torch":
        from .sources import torch_reference

        modules = torch_reference(bundle, model)
    return Deployment(bundle, make_runners(bundle, backend, options, modules))
