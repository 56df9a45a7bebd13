"""The DeploykitError tree: every failure a user can cause or fix lands here."""

from __future__ import annotations

import importlib
from typing import Any


class DeploykitError(Exception):
    """Root of deploykit's errors; the CLI prints these in one or two lines, never a traceback."""


class InputError(DeploykitError):
    """A value given by the user (tensor, option, name) is not what was expected."""


class BundleError(DeploykitError):
    """A bundle on disk is missing, incomplete, corrupt or from a newer deploykit."""


class ExportError(DeploykitError):
    """A model could not be exported to a graph."""


class ParityError(DeploykitError):
    """An exported graph does not match its torch original within tolerance."""


class NumericalError(DeploykitError):
    """A computation produced NaN or Inf (e.g. a flow inversion that overflowed)."""


class BackendUnavailableError(DeploykitError):
    """The requested backend (torch, CUDA, TensorRT) is not installed or cannot run here."""


def optional_import(module: str, need: str) -> Any:
    """The module named `module`, or BackendUnavailableError(`need`: what needs it and how to install it)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendUnavailableError(need) from exc


def choices(values: object) -> str:
    """Format allowed values for an error message: 'a', 'b', 'c'."""
    return ", ".join(repr(v) for v in values)  # type: ignore[union-attr]
