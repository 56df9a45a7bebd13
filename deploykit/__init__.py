"""deploykit: export PyTorch models to ONNX bundles and run them, with parity proof, without PyTorch.

Runtime side (no torch needed): `load`, `verify`, `profile`. Export side (needs deploykit[export]): `export`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .api import load
from .backends import RunnerOptions
from .bundle import Bundle, load_bundle
from .errors import (
    BackendUnavailableError,
    BundleError,
    DeploykitError,
    ExportError,
    InputError,
    ParityError,
)
from .profile import ProfileReport, profile
from .runtimes.deployment import Deployment
from .verify import VerifyResult, verify

if TYPE_CHECKING:
    from torch import nn

    from .pruning import PruneReport

__version__ = "0.1.0"


def export(
    model: nn.Module, family: str, out: str | os.PathLike[str], force: bool = False, **kwargs: Any
) -> Bundle:
    """Export a torch model as a bundle (see deploykit.exporters.export); needs torch, onnx, onnxscript."""
    from .backends.torch import import_torch

    import_torch()
    from .exporters import export as _export

    return _export(model, family, out, force=force, **kwargs)


def prune(source: str, sparsity: float, out: str | os.PathLike[str], method: str = "magnitude", scope: str = "global",
          norm: int = 1, finetune: int = 0, round_to: int = 1, force: bool = False) -> PruneReport:
    """Prune a zoo model or checkpoint into a new checkpoint and measure it (see deploykit.pruning.prune); needs
    torch (and torch-pruning for method="structured")."""
    from .backends.torch import import_torch

    import_torch()
    from .pruning import PruneOptions
    from .pruning import prune as _prune

    return _prune(source, PruneOptions(sparsity, method, scope, norm, finetune, round_to), out, force)


__all__ = [
    "BackendUnavailableError",
    "Bundle",
    "BundleError",
    "Deployment",
    "DeploykitError",
    "ExportError",
    "InputError",
    "ParityError",
    "ProfileReport",
    "RunnerOptions",
    "VerifyResult",
    "export",
    "load",
    "load_bundle",
    "profile",
    "prune",
    "verify",
]
