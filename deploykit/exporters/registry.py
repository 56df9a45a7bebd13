"""Family registry: one spec per family declaring graphs (roles), shapes to check, tolerance and loop.

The runtime side has the other registry (`runtimes.kinds`): a family names the loop kinds its
`loop` may return, and registration refuses a kind the runtime does not know.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ExportError, InputError, choices
from ..parity import Tolerance
from ..runtimes.kinds import KINDS, LoopConfig
from ..specs import DimRule, TensorSpec


@dataclass(frozen=True)
class Role:
    """One graph to export: the module, its declared inputs and output names, example dim values.

    `reference` is what parity compares against when the exported module is a rewrite of the
    user's (e.g. a scan over an nn.LSTM's weights); by default the exported module itself.
    """

    module: nn.Module
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[str, ...]
    example: dict[str, int]  # dim values used for the export trace (batch 2 avoids size-1 specialization)
    dims: dict[str, DimRule] = field(default_factory=dict)
    reference: nn.Module | None = None
    finish: Callable[[Path], None] | None = None  # rewrites the written ONNX file (before the checker runs)

    @property
    def torch_module(self) -> nn.Module:
        """The torch original this role is checked against."""
        return self.module if self.reference is None else self.reference


@dataclass(frozen=True)
class Family:
    """How to export one family: roles from a model, shapes verify checks, tolerance, and the loop config
    (of one of `loop_kinds`: e.g. an rnn is a 'stream' unless bidirectional, then a 'sequence')."""

    name: str
    description: str
    protocol: str  # what a user's own model must provide, shown in errors and docs
    roles: Callable[[nn.Module], dict[str, Role]]
    check_shapes: Callable[[nn.Module], list[dict[str, int]]]
    tolerance: Tolerance
    loop_kinds: tuple[str, ...]
    loop: Callable[[nn.Module], LoopConfig]
    structured: bool = False  # structured pruning may remove channels: every one is internal to the roles' graphs


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add a family to the registry; its loop kinds must be registered on the runtime side."""
    unknown = [k for k in family.loop_kinds if k not in KINDS]
    if unknown or not family.loop_kinds:
        raise ValueError(f"family {family.name!r}: loop kinds {unknown or '()'} are not registered in runtimes.kinds")
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    """Family by name, or InputError listing the registered ones."""
    if name not in FAMILIES:
        raise InputError(f"unknown family {name!r}; choose one of {choices(sorted(FAMILIES))}.")
    return FAMILIES[name]


def attribute(model: nn.Module, name: str, family: str, protocol: str) -> Any:
    """Read a protocol attribute of a user's model, or ExportError saying what the family needs."""
    if not hasattr(model, name):
        raise ExportError(
            f"{type(model).__name__} has no attribute '{name}', which family '{family}' needs: {protocol}"
        )
    return getattr(model, name)
