"""Noise schedules in diffusers' scheduler-config terms, shared by training (torch) and sampling (numpy).

A bundle's `schedule` is a diffusers scheduler config (num_train_timesteps, beta_start, beta_end,
beta_schedule or trained_betas, prediction_type, clip_sample, clip_sample_range, set_alpha_to_one,
steps_offset, timestep_spacing, ...). Each scheduler reads the keys it knows with diffusers' default
for that scheduler class, as `SchedulerClass.from_config(config)` does. Bundles exported before
diffusers configs hold {schedule: 'linear' | 'cosine', training_steps, clip_sample}; `scheduler_config`
translates them. Everything is computed in float64 (diffusers uses float32; see README).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ...errors import InputError, choices

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("leading", "trailing", "linspace")
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}  # prediction_type -> the denoiser output's name
ZOO_SCHEDULES = ("linear", "cosine")
# settings no affine step can follow: (key, the value deploykit runs, why)
UNSUPPORTED = (("thresholding", False, "dynamic thresholding takes a per-sample quantile"),
               ("rescale_betas_zero_snr", False, "zero terminal SNR is not implemented"),
               ("timestep_type", "discrete", "continuous timesteps are not implemented"),
               ("interpolation_type", "linear", "log-linear sigma interpolation is not implemented"),
               ("use_exponential_sigmas", False, "exponential sigmas are not implemented (use --karras)"),
               ("use_beta_sigmas", False, "beta sigmas are not implemented (use --karras)"),
               ("use_lu_lambdas", False, "Lu lambdas are not implemented (use --karras)"))


def zoo_config(schedule: str, training_steps: int, clip_sample: float) -> dict[str, Any]:
    """The diffusers config of the zoo's protocol attributes: linear 1e-4..0.02 scaled to T steps (Ho et al. 2020)
    or the cosine schedule (Nichol & Dhariwal 2021, diffusers' squaredcos_cap_v2), eps prediction, leading
    spacing; DDIM re-derives eps from the clipped x0 (the zoo's small model keeps visible noise otherwise)."""
    if schedule not in ZOO_SCHEDULES:
        raise InputError(f"noise schedule {schedule!r} is unknown; choose one of {choices(ZOO_SCHEDULES)}.")
    scale = 1000 / training_steps
    beta = {"beta_schedule": "linear", "beta_start": 1e-4 * scale, "beta_end": 0.02 * scale} if schedule == "linear" \
        else {"beta_schedule": "squaredcos_cap_v2"}
    return {"num_train_timesteps": int(training_steps), **beta, "prediction_type": "epsilon",
            "clip_sample": bool(clip_sample), "clip_sample_range": float(clip_sample) or 1.0, "set_alpha_to_one": True,
            "steps_offset": 0, "timestep_spacing": "leading", "use_clipped_model_output": True}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_values(config: Mapping[str, Any]) -> None:
    """InputError naming the first numeric setting of the wrong type or outside its range."""
    steps = config.get("num_train_timesteps")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 2):
        raise InputError(f"scheduler config num_train_timesteps={steps!r}: expected an integer >= 2 (the diffusion "
                         "steps the model was trained with).")
    for key in ("beta_start", "beta_end"):
        if key in config and not (_number(config[key]) and 0 < config[key] < 1):
            raise InputError(f"scheduler config {key}={config[key]!r}: expected a number in (0, 1).")
    trained = config.get("trained_betas")
    if trained is not None and not (isinstance(trained, list | tuple) and trained
                                    and all(_number(b) and 0 < b < 1 for b in trained)):
        raise InputError("scheduler config trained_betas: expected a non-empty list of numbers in (0, 1), one per "
                         "training step.")
    if "clip_sample_range" in config and not (_number(config["clip_sample_range"]) and config["clip_sample_range"] > 0):
        raise InputError(f"scheduler config clip_sample_range={config['clip_sample_range']!r}: expected a number > 0.")
    offset = config.get("steps_offset")
    if offset is not None and (isinstance(offset, bool) or not isinstance(offset, int) or offset < 0):
        raise InputError(f"scheduler config steps_offset={offset!r}: expected an integer >= 0.")


def scheduler_config(schedule: Mapping[str, Any]) -> dict[str, Any]:
    """The diffusers config of a bundle's `schedule` (translating pre-diffusers bundles); InputError for
    settings deploykit cannot run and for values of the wrong type or range, naming them."""
    if not isinstance(schedule, Mapping):
        raise InputError(f"the scheduler config is a {type(schedule).__name__}, expected a JSON object of settings.")
    if "training_steps" in schedule:
        config = zoo_config(schedule["schedule"], int(schedule["training_steps"]), float(schedule["clip_sample"]))
    else:
        config = {k: v for k, v in schedule.items() if not k.startswith("_")}
    _check_values(config)
    for key, supported, why in UNSUPPORTED:
        if key in config and config[key] != supported:
            raise InputError(f"scheduler config {key}={config[key]!r}: {why}; deploykit runs {key}={supported!r}.")
    trained = config.get("trained_betas")
    if trained is not None and len(trained) != training_steps(config):
        raise InputError(f"scheduler config trained_betas has {len(trained)} values but num_train_timesteps is "
                         f"{training_steps(config)}; make them agree.")
    if trained is None and config.get("beta_schedule", "linear") not in BETA_SCHEDULES:
        raise InputError(f"scheduler config beta_schedule={config['beta_schedule']!r} is not supported; "
                         f"choose one of {choices(BETA_SCHEDULES)} or give trained_betas.")
    if config.get("prediction_type", "epsilon") not in PREDICTIONS:
        raise InputError(f"scheduler config prediction_type={config['prediction_type']!r} is not supported; "
                         f"choose one of {choices(PREDICTIONS)}.")
    if config.get("timestep_spacing", "leading") not in SPACINGS:
        raise InputError(f"scheduler config timestep_spacing={config['timestep_spacing']!r} is not supported; "
                         f"choose one of {choices(SPACINGS)}.")
    return config


def training_steps(config: Mapping[str, Any]) -> int:
    """T, the number of training timesteps."""
    return int(config.get("num_train_timesteps", 1000))


def betas(config: Mapping[str, Any]) -> np.ndarray:
    """beta_1..beta_T in float64: trained_betas, linear, scaled_linear (linear in sqrt(beta), latent diffusion)
    or squaredcos_cap_v2 (the cosine schedule, betas capped at 0.999)."""
    if config.get("trained_betas") is not None:
        return np.asarray(config["trained_betas"], np.float64)
    total, kind = training_steps(config), config.get("beta_schedule", "linear")
    start, end = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
    if kind == "linear":
        return np.linspace(start, end, total)
    if kind == "scaled_linear":
        return np.linspace(start**0.5, end**0.5, total) ** 2
    s = 0.008
    f = np.cos((np.arange(total + 1) / total + s) / (1 + s) * np.pi / 2) ** 2
    return np.minimum(1 - f[1:] / f[:-1], 0.999)


def alphas_cumprod(config: Mapping[str, Any]) -> np.ndarray:
    """alpha-bar_t = prod_{s<=t} (1 - beta_s), float64 [T]."""
    return np.cumprod(1.0 - betas(config))


def prediction(config: Mapping[str, Any]) -> str:
    """The network's prediction type: epsilon, v_prediction or sample."""
    return str(config.get("prediction_type", "epsilon"))


def spaced_timesteps(config: Mapping[str, Any], steps: int, default_spacing: str, rounded: bool) -> np.ndarray:
    """`steps` timesteps from high to low, diffusers' spacing: leading (multiples of T // steps, + steps_offset),
    trailing (from T - 1 down by T / steps) or linspace (0..T-1; rounded to integers when `rounded`, as DDPM and
    DDIM do; Euler and Heun keep fractional timesteps)."""
    total, spacing = training_steps(config), config.get("timestep_spacing", default_spacing)
    if spacing == "linspace":
        t = np.linspace(0, total - 1, steps)[::-1]
        t = t.round() if rounded else t
    elif spacing == "leading":
        t = (np.arange(steps) * (total // steps)).round()[::-1] + int(config.get("steps_offset", 0))
    else:
        t = np.round(np.arange(total, 0, -total / steps)) - 1
    if t.max() >= total:
        raise InputError(f"--steps {steps} with steps_offset {config.get('steps_offset')} reaches timestep "
                         f"{int(t.max())}; this model has timesteps 0..{total - 1}. Use fewer steps.")
    return t.astype(np.float64)


def x0_coefficients(kind: str, alpha: float | np.ndarray, sigma: float | np.ndarray) -> tuple[Any, Any]:
    """(cx, co) with x0 = cx x + co out at x = alpha x0 + sigma eps: eps, v (Salimans & Ho 2022) or x0 prediction."""
    if kind == "epsilon":
        return 1 / alpha, -sigma / alpha
    if kind == "v_prediction":
        return alpha, -sigma
    return 0 * alpha, 1 + 0 * alpha


def eps_coefficients(kind: str, alpha: float | np.ndarray, sigma: float | np.ndarray) -> tuple[Any, Any]:
    """(ex, eo) with eps = ex x + eo out, the unclipped noise prediction at x = alpha x0 + sigma eps."""
    if kind == "epsilon":
        return 0 * alpha, 1 + 0 * alpha
    if kind == "v_prediction":
        return sigma, alpha
    return 1 / sigma, -alpha / sigma


def clip_bound(config: Mapping[str, Any], default: bool) -> float:
    """The x0 clipping bound: clip_sample_range when clip_sample (diffusers' default for that scheduler), else inf."""
    return float(config.get("clip_sample_range", 1.0)) if config.get("clip_sample", default) else np.inf
