"""DDIM (Song et al. 2021): deterministic at eta = 0, DDPM-like at eta = 1, over strided timesteps."""

from __future__ import annotations

import numpy as np

from ...errors import InputError
from . import Scheduler, check_steps
from .noise_schedule import alphas_cumprod, strided_timesteps


class DDIMScheduler(Scheduler):
    """x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps' + sigma noise, eps' consistent with the clipped x0,
    sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev).

    config: schedule, training_steps, clip_sample, and eta (0 by default).
    """

    name = "ddim"

    def set_timesteps(self, steps: int) -> None:
        total, eta = int(self.config["training_steps"]), float(self.config.get("eta", 0.0))
        check_steps(steps, total, "denoising step")
        if not 0.0 <= eta <= 1.0:
            raise InputError(f"--eta is {eta}, expected a value in [0, 1] (0: deterministic DDIM, 1: DDPM-like).")
        bar = alphas_cumprod(self.config["schedule"], total)
        clip = float(self.config["clip_sample"]) or np.inf
        timesteps = strided_timesteps(steps, total)
        rows = []
        for t in timesteps:
            prev = t - total // steps
            now, before = bar[t], (bar[prev] if prev >= 0 else 1.0)
            sigma = eta * np.sqrt((1 - before) / (1 - now) * (1 - now / before))
            # eps re-derived from the clipped x0, eps' = (x - sqrt(abar_t) x0) / sqrt(1 - abar_t), so the direction
            # term stays consistent with x when x0 is clipped (diffusers' use_clipped_model_output=True); without
            # it, this small model's DDIM samples keep visible noise. Unclipped, it is the textbook update.
            direction = np.sqrt(max(1 - before - sigma**2, 0.0)) / np.sqrt(1 - now)
            rows.append((np.sqrt(1 - now), 1 / np.sqrt(now), clip, np.sqrt(before) - direction * np.sqrt(now), direction,
                         0.0, sigma))
        self._set(timesteps, rows)
