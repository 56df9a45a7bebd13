"""DDPM ancestral sampling (Ho et al. 2020) as diffusers' DDPMScheduler runs it, over spaced timesteps."""

from __future__ import annotations

import numpy as np

from ...errors import InputError
from . import Scheduler, check_steps, register_scheduler, row
from .noise_schedule import alphas_cumprod, clip_bound, prediction, spaced_timesteps, training_steps, x0_coefficients

VARIANCES = ("fixed_small", "fixed_small_log", "fixed_large")


@register_scheduler
class DDPMScheduler(Scheduler):
    """x_prev ~ q(x_prev | x_t, x0): x0 predicted from the network output (clipped when clip_sample), the posterior
    mean sqrt(abar_prev) beta_t / (1 - abar_t) x0 + sqrt(alpha_t) (1 - abar_prev) / (1 - abar_t) x_t, and the
    variance beta-tilde ("fixed_small", diffusers' default) or beta ("fixed_large"); no noise at t = 0.

    The previous timestep is the next one of the spaced list (-1 after the last, where abar = 1).
    """

    name = "ddpm"
    diffusers_class = "DDPMScheduler"
    short_steps = 20

    def set_timesteps(self, steps: int) -> None:
        total = training_steps(self.config)
        check_steps(steps, total, "denoising step")
        # None (what DPM-Solver's and UniPC's configs save) falls through diffusers' DDPM branches as fixed_small
        variance_type = self.config.get("variance_type") or "fixed_small"
        if variance_type not in VARIANCES:
            raise InputError(f"scheduler config variance_type={variance_type!r}: deploykit runs fixed variances "
                             f"({', '.join(VARIANCES)}); a learned variance needs the network's variance channels.")
        timesteps = spaced_timesteps(self.config, steps, "leading", rounded=True)
        bar = alphas_cumprod(self.config)
        prev = np.append(timesteps[1:], -1).astype(np.int64)
        now = bar[timesteps.astype(np.int64)]
        before = np.where(prev >= 0, bar[np.maximum(prev, 0)], 1.0)
        beta = 1 - now / before
        small = np.maximum((1 - before) / (1 - now) * beta, 1e-20)
        variance = beta if variance_type == "fixed_large" else small
        cx, co = x0_coefficients(prediction(self.config), np.sqrt(now), np.sqrt(1 - now))
        clip = clip_bound(self.config, True)
        rows = [row(cx=a, co=b, clip=clip, p=np.sqrt(bf) * be / (1 - n), q=np.sqrt(1 - be) * (1 - bf) / (1 - n),
                    s=np.sqrt(v) if t > 0 else 0.0)
                for t, n, bf, be, v, a, b in zip(timesteps, now, before, beta, variance, cx, co)]
        self._set(timesteps, rows, levels=np.column_stack([np.sqrt(now), np.sqrt(1 - now)]))
