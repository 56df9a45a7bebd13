"""Samplers in sigma space (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
Models", Algorithms 1-2): Euler, Euler ancestral and Heun as diffusers' Euler/EulerAncestral/HeunDiscreteScheduler
run them, with Karras sigmas optional.

The sample lives at x = x0 + sigma eps with sigma = sqrt((1 - abar) / abar); the network sees x / sqrt(sigma^2 + 1)
(the variance-preserving sample) at the timestep whose sigma it is, and the ODE derivative is (x - x0) / sigma.
With Karras sigmas (rho = 7) the timesteps are fractional; a network whose t input is an integer gets them
rounded (k-diffusion's "quantize"), while the step keeps the exact sigma.
"""

from __future__ import annotations

import numpy as np

from ...errors import InputError
from . import Scheduler, check_steps, register_scheduler, row
from .noise_schedule import alphas_cumprod, clip_bound, prediction, spaced_timesteps, training_steps, x0_coefficients

RHO = 7.0


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int) -> np.ndarray:
    """Karras et al. 2022 eq. 5: (sigma_max^(1/rho) + i / (n - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho."""
    ramp = np.linspace(0, 1, steps)
    return (sigma_max ** (1 / RHO) + ramp * (sigma_min ** (1 / RHO) - sigma_max ** (1 / RHO))) ** RHO


def wants_karras(config: dict, config_default: bool) -> bool:
    """Karras sigmas for this run: the explicit --karras option when given, else the config's choice
    (`config_default`: what the scheduler's diffusers class reads from use_karras_sigmas)."""
    explicit = config.get("karras")
    return bool(explicit) if explicit is not None else config_default


def sigma_to_t(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """The fractional timestep of each sigma: linear interpolation of log sigma over the training sigmas."""
    log_sigma = np.log(np.maximum(sigmas, 1e-10))
    dists = log_sigma - log_sigmas[:, None]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=len(log_sigmas) - 2)
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1)
    return (1 - w) * low + w * (low + 1)


def training_sigmas(config: dict) -> np.ndarray:
    """sigma_t = sqrt((1 - abar_t) / abar_t) for t = 0..T-1 (ascending)."""
    bar = alphas_cumprod(config)
    return np.sqrt((1 - bar) / bar)


def _sigma_levels(sigmas: np.ndarray) -> np.ndarray:
    """Noise levels (1, sigma) of the calls at `sigmas`: in sigma space the sample is x0 + sigma noise."""
    return np.column_stack([np.ones_like(sigmas), sigmas])


class SigmaScheduler(Scheduler):
    """Shared by Euler, Euler ancestral and Heun: sigmas at the spaced timesteps (or Karras sigmas between the
    extreme ones), a final sigma of 0, and x_T ~ N(0, sigma_max^2 (+1 for leading spacing))."""

    options = ("karras",)
    config_keys: frozenset[str] = frozenset({"use_karras_sigmas"})  # keys beyond the schedule that diffusers' class reads

    def _setting(self, key: str, default: object) -> object:
        """A config value this scheduler's diffusers class knows (its default otherwise)."""
        return self.config.get(key, default) if key in self.config_keys else default

    def _sigmas(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps [steps], sigmas [steps + 1] ending in the final sigma)."""
        check_steps(steps, training_steps(self.config), "sampling step")
        timesteps = spaced_timesteps(self.config, steps, "linspace", rounded=False)
        table = training_sigmas(self.config)
        sigmas = np.interp(timesteps, np.arange(len(table)), table)
        if wants_karras(self.config, bool(self._setting("use_karras_sigmas", False))):
            low, high = self._setting("sigma_min", None), self._setting("sigma_max", None)
            sigmas = karras_sigmas(sigmas[-1] if low is None else float(low), sigmas[0] if high is None else float(high),
                                   steps)
            timesteps = sigma_to_t(sigmas, np.log(table))
        final = table[0] if self._setting("final_sigmas_type", "zero") == "sigma_min" else 0.0
        return timesteps, np.append(sigmas, final)

    def _start(self, sigmas: np.ndarray) -> float:
        top = float(sigmas.max())
        return top if self.config.get("timestep_spacing", "linspace") in ("linspace", "trailing") else (top**2 + 1) ** 0.5

    def _x0(self, sigma: float) -> tuple[float, float, float]:
        """(cin, cx, co) at sigma: the input scale and x0 from the output (eps, v or x0 prediction)."""
        alpha = 1 / np.sqrt(sigma**2 + 1)
        cx, co = x0_coefficients(prediction(self.config), alpha, sigma * alpha)
        return alpha, cx * alpha, co  # x here is the VP sample / alpha


@register_scheduler
class EulerScheduler(SigmaScheduler):
    """Euler's method on dx/dsigma = (x - x0) / sigma (Karras et al. 2022, Algorithm 2 without churn)."""

    name = "euler"
    diffusers_class = "EulerDiscreteScheduler"
    default_steps = 30
    config_keys = frozenset({"use_karras_sigmas", "sigma_min", "sigma_max", "final_sigmas_type"})

    def set_timesteps(self, steps: int) -> None:
        timesteps, sigmas = self._sigmas(steps)
        rows = []
        for sigma, after in zip(sigmas[:-1], sigmas[1:]):
            cin, cx, co = self._x0(sigma)
            rows.append(row(cin=cin, cx=cx, co=co, p=1 - after / sigma, q=after / sigma))
        self._set(timesteps, rows, self._start(sigmas), _sigma_levels(sigmas[:-1]))


@register_scheduler
class EulerAncestralScheduler(SigmaScheduler):
    """Euler ancestral (k-diffusion's sample_euler_ancestral): an Euler step to sigma_down, then fresh noise of
    sigma_up, sigma_up = sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2), sigma_down^2 = sigma_next^2 - sigma_up^2.
    diffusers' EulerAncestralDiscreteScheduler has no Karras sigmas; with --karras this follows k-diffusion."""

    name = "euler-a"
    diffusers_class = "EulerAncestralDiscreteScheduler"
    default_steps = 30
    config_keys = frozenset()

    def set_timesteps(self, steps: int) -> None:
        timesteps, sigmas = self._sigmas(steps)
        rows = []
        for sigma, after in zip(sigmas[:-1], sigmas[1:]):
            up = np.sqrt(after**2 * (sigma**2 - after**2) / sigma**2)
            down = np.sqrt(after**2 - up**2)
            cin, cx, co = self._x0(sigma)
            rows.append(row(cin=cin, cx=cx, co=co, p=1 - down / sigma, q=down / sigma, s=up))
        self._set(timesteps, rows, self._start(sigmas), _sigma_levels(sigmas[:-1]))


@register_scheduler
class HeunScheduler(SigmaScheduler):
    """Heun's second-order method (Karras et al. 2022, Algorithm 1 without churn): an Euler step to sigma_next, a
    second network call there, and the step redone with the mean of both derivatives; the last step (to sigma 0)
    is plain Euler. `steps` steps make 2 steps - 1 network calls; x0 is clipped when clip_sample.

    Calls: first order at sigma (x_mid = x + d1 dt, h = x + d1 dt / 2), second order at sigma_next
    (x_next = h + d2 dt / 2).
    """

    name = "heun"
    diffusers_class = "HeunDiscreteScheduler"
    default_steps = 15
    short_steps = 5
    order = 2

    def set_timesteps(self, steps: int) -> None:
        timesteps, sigmas = self._sigmas(steps)
        clip = clip_bound(self.config, False)
        calls, rows, levels = [], [], []
        for i, (sigma, after) in enumerate(zip(sigmas[:-1], sigmas[1:])):
            dt = after - sigma
            cin, cx, co = self._x0(sigma)
            calls.append(timesteps[i])
            levels.append(sigma)
            rows.append(row(cin=cin, cx=cx, co=co, clip=clip, p=-dt / sigma, q=1 + dt / sigma,
                            hp=-dt / (2 * sigma), hq=1 + dt / (2 * sigma)))
            if after > 0 and i + 1 < steps:
                cin, cx, co = self._x0(after)
                calls.append(timesteps[i + 1])
                levels.append(after)
                rows.append(row(cin=cin, cx=cx, co=co, clip=clip, p=-dt / (2 * after), q=dt / (2 * after), u=1.0))
        if len(rows) != 2 * steps - 1:
            raise InputError("heun: a zero sigma before the last step; use another --scheduler.")
        self._set(calls, rows, self._start(sigmas), _sigma_levels(np.asarray(levels)))
