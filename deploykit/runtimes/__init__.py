"""Loop kinds: what turns a bundle's graphs into samplers, generators and streams (numpy only, never torch).

Importing this package imports every module in it, and each registers the loop kinds it defines
(see kinds.py): a new kind is a new module here, nothing else to wire.
"""

from __future__ import annotations

import importlib
import pkgutil

from .kinds import KINDS, LoopConfig, LoopKind, get_kind

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["KINDS", "LoopConfig", "LoopKind", "get_kind"]
