"""DDIM (Song et al. 2021) as diffusers' DDIMScheduler runs it: deterministic at eta = 0, DDPM-like at eta = 1."""

from __future__ import annotations

import numpy as np

from ...errors import InputError
from . import Scheduler, check_steps, register_scheduler, row
from .noise_schedule import (
    alphas_cumprod,
    clip_bound,
    eps_coefficients,
    prediction,
    spaced_timesteps,
    training_steps,
    x0_coefficients,
)


@register_scheduler
class DDIMScheduler(Scheduler):
    """x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma noise,
    sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev), prev = t - T // steps
    (abar_prev = 1, or abar_0 when set_alpha_to_one is false, past the start).

    eps is the network's own prediction (diffusers' default), or with use_clipped_model_output re-derived from
    the clipped x0, (x - sqrt(abar_t) x0) / sqrt(1 - abar_t), so the direction stays consistent with x.
    """

    name = "ddim"
    diffusers_class = "DDIMScheduler"
    default_steps = 50
    options = ("eta", "clipped_model_output")

    def set_timesteps(self, steps: int) -> None:
        eta = float(self.config.get("eta", 0.0))
        if not 0.0 <= eta <= 1.0:
            raise InputError(f"--eta is {eta}, expected a value in [0, 1] (0: deterministic DDIM, 1: DDPM-like).")
        total = training_steps(self.config)
        check_steps(steps, total, "denoising step")
        timesteps = spaced_timesteps(self.config, steps, "leading", rounded=True)
        bar = alphas_cumprod(self.config)
        final = 1.0 if self.config.get("set_alpha_to_one", True) else bar[0]
        prev = timesteps.astype(np.int64) - total // steps
        now = bar[timesteps.astype(np.int64)]
        before = np.where(prev >= 0, bar[np.maximum(prev, 0)], final)
        sigma = eta * np.sqrt((1 - before) / (1 - now) * (1 - now / before))
        direction = np.sqrt(np.maximum(1 - before - sigma**2, 0.0))
        kind, clip = prediction(self.config), clip_bound(self.config, True)
        cx, co = x0_coefficients(kind, np.sqrt(now), np.sqrt(1 - now))
        if self.config.get("use_clipped_model_output", False):
            d = direction / np.sqrt(1 - now)
            p, q, r = np.sqrt(before) - d * np.sqrt(now), d, 0 * d
        else:
            ex, eo = eps_coefficients(kind, np.sqrt(now), np.sqrt(1 - now))
            p, q, r = np.sqrt(before), direction * ex, direction * eo
        rows = [row(cx=a, co=b, clip=clip, p=pp, q=qq, r=rr, s=sg) for a, b, pp, qq, rr, sg in zip(cx, co, p, q, r, sigma)]
        self._set(timesteps, rows, levels=np.column_stack([np.sqrt(now), np.sqrt(1 - now)]))
