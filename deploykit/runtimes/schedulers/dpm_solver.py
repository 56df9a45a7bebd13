"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models", Algorithm 2) as diffusers' DPMSolverMultistepScheduler runs it (algorithm_type dpmsolver++,
solver_order 2), Karras sigmas optional.

With lambda = log(alpha / sigma) and h = lambda_next - lambda, a first-order step is
x_next = (sigma_next / sigma) x - alpha_next (e^-h - 1) x0 (DDIM in data prediction); the second-order
(multistep) step adds the difference D1 = (x0 - x0_prev) / r, r = h_prev / h, weighted 1/2 (midpoint) or
((e^-h - 1) / h + 1) (heun). The previous x0 is the history buffer. The first step is first order, and so
is the last when the final sigma is 0 or (lower_order_final) fewer than 15 steps run.
"""

from __future__ import annotations

import numpy as np

from ...errors import InputError
from . import Scheduler, check_steps, register_scheduler, row
from .noise_schedule import alphas_cumprod, prediction, training_steps, x0_coefficients
from .sigmas import karras_sigmas, sigma_to_t, training_sigmas, wants_karras

SOLVER_TYPES = ("midpoint", "heun")


def dpm_timesteps(config: dict, steps: int) -> np.ndarray:
    """diffusers' DPM-Solver spacing: steps + 1 points with the last dropped, integer timesteps below the
    lambda_min_clipped cut."""
    total, spacing = training_steps(config), config.get("timestep_spacing", "linspace")
    bar = alphas_cumprod(config)
    lambdas = 0.5 * np.log(bar) - 0.5 * np.log(1 - bar)
    last = total - int(np.searchsorted(lambdas[::-1], float(config.get("lambda_min_clipped", -np.inf))))
    if spacing == "linspace":
        t = np.linspace(0, last - 1, steps + 1).round()[::-1][:-1]
    elif spacing == "leading":
        t = (np.arange(steps + 1) * (last // (steps + 1))).round()[::-1][:-1] + int(config.get("steps_offset", 0))
    else:
        t = np.arange(last, 0, -total / steps).round() - 1
    return t.astype(np.int64)


@register_scheduler
class DPMSolverPlusPlus2M(Scheduler):
    """DPM-Solver++(2M) over the variance-preserving sample (no input scaling, x_T ~ N(0, 1))."""

    name = "dpm++2m"
    diffusers_class = "DPMSolverMultistepScheduler"
    default_steps = 20
    options = ("karras",)

    def set_timesteps(self, steps: int) -> None:
        check_steps(steps, training_steps(self.config), "sampling step")
        solver = self.config.get("solver_type", "midpoint")
        if solver not in SOLVER_TYPES:
            raise InputError(f"scheduler config solver_type={solver!r}: choose one of {', '.join(SOLVER_TYPES)}.")
        table = training_sigmas(self.config)
        timesteps = dpm_timesteps(self.config, steps)
        if wants_karras(self.config, bool(self.config.get("use_karras_sigmas", False))):
            sigmas = karras_sigmas(table[0], table[-1], steps)
            timesteps = sigma_to_t(sigmas, np.log(table))
            if self.config.get("beta_schedule") != "squaredcos_cap_v2":
                timesteps = timesteps.round()
            timesteps = timesteps.astype(np.int64)
        else:
            sigmas = np.interp(timesteps, np.arange(len(table)), table)
        final = table[0] if self.config.get("final_sigmas_type", "zero") == "sigma_min" else 0.0
        sigmas = np.append(sigmas, final)
        n = len(timesteps)
        alpha = 1 / np.sqrt(sigmas**2 + 1)  # VP: alpha_t, and sigma_t = sigmas * alpha
        lower_final = bool(self.config.get("euler_at_final", False)) or final == 0.0 or (
            self.config.get("lower_order_final", True) and n < 15)
        kind, rows, first = prediction(self.config), [], []
        for i in range(n):
            cx, co = x0_coefficients(kind, alpha[i], sigmas[i] * alpha[i])
            ratio = sigmas[i + 1] / sigmas[i]  # e^-h: lambda = -log(sigma) in these (VE) sigmas
            q = ratio * alpha[i + 1] / alpha[i]  # sigma_t / sigma_s of the VP sample
            p = alpha[i + 1] * (1 - ratio)  # -alpha_t (e^-h - 1)
            first.append(row(cx=cx, co=co, p=p, q=q, hp=1.0))  # first order: a run's first step, and the last
            if i == 0 or (i == n - 1 and lower_final):
                rows.append(first[-1])
                continue
            h = np.log(sigmas[i] / sigmas[i + 1])
            r0 = np.log(sigmas[i - 1] / sigmas[i]) / h
            weight = 0.5 * p if solver == "midpoint" else alpha[i + 1] * ((ratio - 1) / h + 1)
            rows.append(row(cx=cx, co=co, p=p + weight / r0, q=q, u=-weight / r0, hp=1.0))
        self._set(timesteps, rows, levels=np.column_stack([alpha[:-1], sigmas[:-1] * alpha[:-1]]), restart=first)
