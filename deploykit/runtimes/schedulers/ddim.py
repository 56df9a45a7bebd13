"""DDIM (Song et al. 2021): deterministic at eta = 0, DDPM-like at eta = 1, over strided timesteps."""

from __future__ import annotations

import numpy as np

from ...errors import InputError
from . import Scheduler
from .noise_schedule import strided_alphas


class DDIMScheduler(Scheduler):
    """x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps' + sigma noise, eps' consistent with the clipped x0,
    sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev).

    config: schedule, training_steps, clip_sample, and eta (0 by default).
    """

    name = "ddim"

    def set_timesteps(self, steps: int) -> None:
        eta = float(self.config.get("eta", 0.0))
        if not 0.0 <= eta <= 1.0:
            raise InputError(f"--eta is {eta}, expected a value in [0, 1] (0: deterministic DDIM, 1: DDPM-like).")
        timesteps, now, before, clip = strided_alphas(self.config, steps)
        sigma = eta * np.sqrt((1 - before) / (1 - now) * (1 - now / before))
        # eps re-derived from the clipped x0, eps' = (x - sqrt(abar_t) x0) / sqrt(1 - abar_t), so the direction
        # term stays consistent with x when x0 is clipped (diffusers' use_clipped_model_output=True); without
        # it, this small model's DDIM samples keep visible noise. Unclipped, it is the textbook update.
        direction = np.sqrt(np.maximum(1 - before - sigma**2, 0.0)) / np.sqrt(1 - now)
        rows = [(np.sqrt(1 - n), 1 / np.sqrt(n), clip, np.sqrt(b) - d * np.sqrt(n), d, 0.0, sg)
                for n, b, d, sg in zip(now, before, direction, sigma)]
        self._set(timesteps, rows)
