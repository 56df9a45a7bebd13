"""Beta schedules of DDPM (Ho et al. 2020, linear) and improved DDPM (Nichol & Dhariwal 2021, cosine),
and the strided "leading" timesteps of a shorter loop; shared by training (torch) and sampling (numpy)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ...errors import InputError, choices

SCHEDULES = ("linear", "cosine")


def betas(schedule: str, training_steps: int) -> np.ndarray:
    """beta_1..beta_T in float64: linear from 1e-4 to 0.02 (scaled to T), or the cosine schedule."""
    if schedule == "linear":
        scale = 1000 / training_steps
        return np.linspace(1e-4 * scale, 0.02 * scale, training_steps)
    if schedule == "cosine":
        s = 0.008
        f = np.cos((np.arange(training_steps + 1) / training_steps + s) / (1 + s) * np.pi / 2) ** 2
        return np.minimum(1 - f[1:] / f[:-1], 0.999)
    raise InputError(f"noise schedule {schedule!r} is unknown; choose one of {choices(SCHEDULES)}.")


def alphas_cumprod(schedule: str, training_steps: int) -> np.ndarray:
    """alpha-bar_t = prod_{s<=t} (1 - beta_s), float64 [T]."""
    return np.cumprod(1.0 - betas(schedule, training_steps))


def strided_timesteps(steps: int, training_steps: int) -> np.ndarray:
    """`steps` timesteps from high to low with stride T // steps, ending at 0 (diffusers' "leading" spacing)."""
    return (np.arange(steps)[::-1] * (training_steps // steps)).astype(np.int64)


def strided_alphas(config: Mapping[str, Any], steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """For a DDPM-style loop of `steps` steps: (timesteps, abar_t, abar_prev (1 after the last step), clip bound
    (inf for clip_sample 0)); InputError unless 1 <= steps <= training_steps."""
    from . import check_steps

    total = int(config["training_steps"])
    check_steps(steps, total, "denoising step")
    bar = alphas_cumprod(config["schedule"], total)
    timesteps = strided_timesteps(steps, total)
    prev = timesteps - total // steps
    before = np.where(prev >= 0, bar[np.maximum(prev, 0)], 1.0)
    return timesteps, bar[timesteps], before, float(config["clip_sample"]) or np.inf
