"""Numpy schedulers for denoising loops, shaped like diffusers': set_timesteps() / timesteps / step().

Every scheduler here reduces one step to the same affine update of the sample x given the
network output `out` (eps for diffusion, the score for Langevin) and injected standard normal noise:

    x0     = clip((x - a * out) * b, -clip, clip)        # the predicted clean sample
    x_prev = p * x0 + q * x + r * out + s * noise

`set_timesteps(steps)` fills `timesteps` (the network's t input, in sampling order) and `table`
(one row of COLUMNS per step). The host loop applies `step()`; the exported sampler graph applies
the very same rows inside an ONNX Scan, so the two loops differ only by where they run.
One file per algorithm: ddpm.py, ddim.py, langevin.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ...errors import InputError, choices

COLUMNS = ("a", "b", "clip", "p", "q", "r", "s")


def affine_step(x: np.ndarray, out: np.ndarray, noise: np.ndarray, row: np.ndarray) -> np.ndarray:
    """One update by a row of COLUMNS, in float32 like the graph."""
    a, b, clip, p, q, r, s = row.astype(np.float32)
    x0 = np.clip((x - a * out) * b, -clip, clip)
    return (p * x0 + q * x + r * out + s * noise).astype(np.float32)


class Scheduler:
    """Base of the schedulers: a config dict (saved as JSON in the bundle), timesteps and a table of rows."""

    name = ""
    init_noise_sigma = 1.0  # standard deviation of the starting noise x_T

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)
        self.timesteps = np.zeros(0, np.int64)
        self.table = np.zeros((0, len(COLUMNS)), np.float32)

    def set_timesteps(self, steps: int) -> None:
        """Choose `steps` network calls; fills `timesteps` and `table`."""
        raise NotImplementedError

    def step(self, out: np.ndarray, timestep: int, sample: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """The sample after the step at `timestep`, given the network output there and injected noise."""
        index = int(np.flatnonzero(self.timesteps == timestep)[0])
        return affine_step(sample, out, noise, self.table[index])

    def _set(self, timesteps: np.ndarray, rows: list[tuple[float, ...]]) -> None:
        self.timesteps = np.asarray(timesteps, np.int64)
        self.table = np.asarray(rows, np.float64).astype(np.float32).reshape(-1, len(COLUMNS))


def check_steps(steps: int, most: int | None, what: str) -> None:
    """InputError unless 1 <= steps (<= most)."""
    if steps < 1:
        raise InputError(f"--steps is {steps}, expected at least 1 {what}.")
    if most is not None and steps > most:
        raise InputError(f"--steps is {steps}, but this model was trained with {most} diffusion steps; "
                         f"a loop can take at most {most} (fewer are strided).")


def make_scheduler(name: str, allowed: Sequence[str], schedule: Mapping[str, Any], **options: Any) -> Scheduler:
    """Scheduler `name` configured from a diffusion bundle's `schedule` plus `options` (e.g. eta);
    InputError for one not in the bundle's `allowed` schedulers."""
    from .ddim import DDIMScheduler
    from .ddpm import DDPMScheduler
    from .langevin import AnnealedLangevin

    known: dict[str, type[Scheduler]] = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "langevin": AnnealedLangevin}
    if name not in allowed:
        raise InputError(f"--scheduler {name!r} does not fit this bundle; choose one of {choices(allowed)}.")
    return known[name]({**schedule, **options})
