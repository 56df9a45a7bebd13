"""DDPM ancestral sampling (Ho et al. 2020), with strided timesteps when asked for fewer steps than T."""

from __future__ import annotations

import numpy as np

from . import Scheduler, check_steps
from .noise_schedule import alphas_cumprod, strided_timesteps


class DDPMScheduler(Scheduler):
    """x_{prev} ~ q(x_prev | x_t, x0) with x0 predicted from eps and clipped; variance beta-tilde ("fixed small").

    config: schedule ('linear' | 'cosine'), training_steps, clip_sample (0: no clipping).
    """

    name = "ddpm"

    def set_timesteps(self, steps: int) -> None:
        total = int(self.config["training_steps"])
        check_steps(steps, total, "denoising step")
        bar = alphas_cumprod(self.config["schedule"], total)
        clip = float(self.config["clip_sample"]) or np.inf
        timesteps = strided_timesteps(steps, total)
        rows = []
        for t in timesteps:
            prev = t - total // steps
            now, before = bar[t], (bar[prev] if prev >= 0 else 1.0)
            beta = 1 - now / before
            variance = (1 - before) / (1 - now) * beta
            rows.append((np.sqrt(1 - now), 1 / np.sqrt(now), clip,
                         np.sqrt(before) * beta / (1 - now),
                         np.sqrt(1 - beta) * (1 - before) / (1 - now),
                         0.0,
                         np.sqrt(variance) if prev >= 0 else 0.0))
        self._set(timesteps, rows)
