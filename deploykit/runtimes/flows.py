"""Normalizing-flow loops on any runner, torch-free: sampling with temperature, density, bits/dim,
and the host-side inversion of autoregressive flows (one `inverse_step.{k}` call per dimension).

Latents are drawn in numpy from PCG64 seeded with `seed`, so every backend samples the same z.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import InputError, NumericalError
from .base import Runner
from .generator import check_count

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
ROUND_TRIP_LIMIT = 1e-3  # |x - sample(log_prob(x).z)| allowed at export; fp32 flows reach ~1e-6


def check_temperature(temperature: float) -> None:
    """InputError unless the temperature is a positive number."""
    if not temperature > 0:
        raise InputError(f"--temperature is {temperature}, expected a number > 0 (z ~ N(0, T^2); 1 = the model, "
                         "below 1 = sharper samples).")


def latent_shape(loop: Mapping[str, Any], size: tuple[int, int] | None = None) -> tuple[int, ...]:
    """Shape of one z: the trained event shape, or [C, *size] for an image flow at another size."""
    shape = tuple(int(d) for d in loop["event_shape"])
    if size is None:
        return shape
    if len(shape) != 3:
        raise InputError(f"--size is for image flows; this flow's samples are vectors of {shape[0]}.")
    factor = int(loop["squeeze_factor"])
    if any(d < factor or d % factor for d in size):
        raise InputError(f"--size {size[0]}x{size[1]}: height and width must be multiples of {factor} "
                         f"(this flow squeezes by {factor}); try {max(factor, size[0] // factor * factor)}x"
                         f"{max(factor, size[1] // factor * factor)}.")
    return (shape[0], *size)


def draw_latents(loop: Mapping[str, Any], n: int, seed: int, temperature: float = 1.0,
                 size: tuple[int, int] | None = None) -> np.ndarray:
    """z ~ N(0, T^2 I), float32 [n, *event]."""
    check_count(n)
    check_temperature(temperature)
    z = np.random.default_rng(seed).standard_normal((n, *latent_shape(loop, size)), dtype=np.float32)
    return z * np.float32(temperature)


def _check_finite(values: np.ndarray, what: str, hint: str) -> np.ndarray:
    bad = ~np.isfinite(values.reshape(len(values), -1)).all(1)
    if bad.any():
        raise NumericalError(f"{what} produced NaN/Inf in {int(bad.sum())} of {len(values)} example(s) "
                             f"(first: #{int(np.argmax(bad))}); {hint}")
    return values


def _host_direction(loop: Mapping[str, Any], direction: str) -> None:
    if loop.get("sequential") != direction:
        one_pass = "one graph pass" if loop.get("sequential") else "a coupling flow, one pass both ways"
        raise InputError(f"the host loop inverts an autoregressive flow's slow direction; this bundle's {direction} is "
                         f"{one_pass}. Drop --host-loop (MAF: sampling, IAF: density).")


def invert_on_host(runners: Mapping[str, Runner], loop: Mapping[str, Any], given: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The slow direction of an autoregressive flow, one `inverse_step.{k}` call per dimension and layer.

    MAF sampling runs the layers from last to first, IAF density from first to last; pass r of a
    layer keeps the candidate of the r-th dimension of its ordering.
    """
    orderings = loop["orderings"]
    layers = range(len(orderings))
    total = np.zeros(len(given), np.float32)
    for k in (reversed(layers) if loop["sequential"] == "sample" else layers):
        partial = np.zeros_like(given)
        for i in orderings[k]:
            out = runners[f"inverse_step.{k}"].infer({"partial": partial, "given": given})
            partial[:, i] = out["candidate"][:, i]
        given, total = partial, total + out["logdet"]
    return given, total


def to_data(runners: Mapping[str, Runner], loop: Mapping[str, Any], z: np.ndarray, host: bool = False) -> np.ndarray:
    """x = flow^-1(z) by the `sample` graph or (MAF) the host loop; NumericalError if it overflows."""
    if host:
        _host_direction(loop, "sample")
        x = invert_on_host(runners, loop, z)[0]
    else:
        x = runners["sample"].infer({"z": z})["x"]
    return _check_finite(x, "sampling (z -> x)", "the inverse overflowed: lower --temperature, or check the model.")


def flow_log_prob(runners: Mapping[str, Runner], loop: Mapping[str, Any], x: np.ndarray, host: bool = False) -> dict[str, np.ndarray]:
    """log_prob, z and logdet per example by the `log_prob` graph or (IAF) the host loop."""
    if host:
        _host_direction(loop, "log_prob")
        runners["log_prob"].spec.check_inputs({"x": x}, "flow log_prob")
        z, logdet = invert_on_host(runners, loop, x)
        log_prob = (-0.5 * z * z - HALF_LOG_2PI).reshape(len(z), -1).sum(1) + logdet
        out = {"log_prob": log_prob.astype(np.float32), "z": z, "logdet": logdet}
    else:
        out = runners["log_prob"].infer({"x": x})
    _check_finite(out["z"], "density (x -> z)", "the inversion overflowed: check that x is data the flow was trained on.")
    return out


def sample_flow(runners: Mapping[str, Runner], loop: Mapping[str, Any], n: int, seed: int, temperature: float = 1.0,
                size: tuple[int, int] | None = None, host: bool = False) -> np.ndarray:
    """`n` samples [n, *event] at `temperature` (z scaled by it), optionally at another image size."""
    return to_data(runners, loop, draw_latents(loop, n, seed, temperature, size), host)


def dequantize(pixels: np.ndarray, levels: int, seed: int) -> np.ndarray:
    """Uniform dequantization: (pixels + u) / levels in [0, 1), u ~ U[0, 1) from `seed`."""
    if not np.issubdtype(pixels.dtype, np.integer) or pixels.min() < 0 or pixels.max() >= levels:
        raise InputError(f"pixels must be integers in [0, {levels - 1}] (this flow models {levels} levels); "
                         f"got {pixels.dtype} in [{pixels.min()}, {pixels.max()}].")
    u = np.random.default_rng(seed).random(pixels.shape, dtype=np.float32)
    return ((pixels + u) / np.float32(levels)).astype(np.float32)


def bits_from_log_prob(log_prob: np.ndarray, dims: int, levels: int) -> np.ndarray:
    """Bits per dimension of discrete data from the dequantized log-density of D = `dims` values in [0, 1):
    -(log p - D log L) / (D log 2), an upper bound on the discrete model's."""
    return -(np.asarray(log_prob, np.float64) - dims * math.log(levels)) / (dims * math.log(2))


def bits_per_dim(runners: Mapping[str, Runner], loop: Mapping[str, Any], pixels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Bits per dimension of integer images under the dequantized flow, per example (u drawn from `seed`)."""
    levels = int(loop.get("levels", 0))
    if not levels:
        raise InputError("bits/dim is for flows of discrete data (images); this flow models continuous vectors.")
    x = dequantize(pixels, levels, seed)
    return bits_from_log_prob(flow_log_prob(runners, loop, x)["log_prob"], x[0].size, levels)


def density_grid(runners: Mapping[str, Runner], loop: Mapping[str, Any], extent: float, resolution: int = 160) -> np.ndarray:
    """log p on a resolution x resolution grid over [-extent, extent]^2 (2-D flows), row 0 at the top."""
    if list(loop["event_shape"]) != [2]:
        raise InputError(f"a density plot needs a 2-D flow; this one has event shape {loop['event_shape']}.")
    axis = np.linspace(-extent, extent, resolution, dtype=np.float32)
    gx, gy = np.meshgrid(axis, axis[::-1])
    points = np.stack([gx.ravel(), gy.ravel()], 1)
    return flow_log_prob(runners, loop, points)["log_prob"].reshape(resolution, resolution)


def round_trip_error(runners: Mapping[str, Runner], loop: Mapping[str, Any], seed: int = 0) -> float:
    """max |x - sample(log_prob(x).z)| over 4 random inputs at the trained shape, through the graphs."""
    spec = runners["log_prob"].spec
    dims = {"batch": 4} | ({"height": loop["event_shape"][1], "width": loop["event_shape"][2]} if len(loop["event_shape"]) == 3 else {})
    x = spec.random_inputs(np.random.default_rng(seed), dims)["x"]
    z = runners["log_prob"].infer({"x": x})["z"]
    return float(np.abs(runners["sample"].infer({"z": z})["x"] - x).max())
