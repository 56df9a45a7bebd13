"""Loop kinds: what turns a bundle's graphs into samplers, generators and streams (numpy only, never torch).

Importing this package registers every loop kind (see kinds.py): each module below registers the
kinds it defines.
"""

from __future__ import annotations

from . import autoregressive, diffusion, energy, flows, generator, graphs, recurrent, transformer, vae  # noqa: F401
from .kinds import KINDS, LoopConfig, LoopKind, get_kind

__all__ = ["KINDS", "LoopConfig", "LoopKind", "get_kind"]
