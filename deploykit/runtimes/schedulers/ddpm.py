"""DDPM ancestral sampling (Ho et al. 2020), with strided timesteps when asked for fewer steps than T."""

from __future__ import annotations

import numpy as np

from . import Scheduler
from .noise_schedule import strided_alphas


class DDPMScheduler(Scheduler):
    """x_{prev} ~ q(x_prev | x_t, x0) with x0 predicted from eps and clipped; variance beta-tilde ("fixed small").

    config: schedule ('linear' | 'cosine'), training_steps, clip_sample (0: no clipping).
    """

    name = "ddpm"

    def set_timesteps(self, steps: int) -> None:
        timesteps, now, before, clip = strided_alphas(self.config, steps)
        beta = 1 - now / before
        variance = (1 - before) / (1 - now) * beta
        rows = [(np.sqrt(1 - n), 1 / np.sqrt(n), clip, np.sqrt(b) * be / (1 - n), np.sqrt(1 - be) * (1 - b) / (1 - n), 0.0,
                 np.sqrt(v) if t > 0 else 0.0)
                for t, n, b, be, v in zip(timesteps, now, before, beta, variance)]
        self._set(timesteps, rows)
