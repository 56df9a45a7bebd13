"""Normalizing-flow loops on any runner, torch-free: sampling with temperature, density, bits/dim,
and the host-side inversion of autoregressive flows (one `inverse_step.{k}` call per dimension).

Latents are drawn in numpy from PCG64 seeded with `seed`, so every backend samples the same z.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..backends.base import Runner
from ..checks import check_count
from ..errors import InputError, NumericalError
from ..nn.density import HALF_LOG_2PI, bits_from_log_prob
from .kinds import ImageLayout, LoopKind, Runners, SampleOptions, Writer, register, write_images


@dataclass(frozen=True, kw_only=True)
class FlowConfig(ImageLayout):
    """`log_prob` (x -> log_prob, z, logdet) and `sample` (z -> x) graphs over an event shape.

    Image flows sample at any size their `squeeze_factor` divides; `levels` > 0 for dequantized
    discrete data. MAF / IAF add `inverse_step.{k}` graphs: `sequential` names the direction that
    the host loop inverts one dimension at a time, along each layer's ordering.
    """

    kind = "flow"
    roles: list[str]
    event_shape: list[int]
    squeeze_factor: int
    levels: int = 0
    sequential: str | None = None
    orderings: list[list[int]] | None = None


@dataclass(frozen=True)
class FlowOptions(SampleOptions):
    """z ~ N(0, temperature^2 I); image flows at another `size` (H, W); MAF with host=True inverts on the host."""

    temperature: float = 1.0
    size: tuple[int, int] | None = None
    host: bool = False


ROUND_TRIP_LIMIT = 1e-3  # |x - sample(log_prob(x).z)| allowed at export; fp32 flows reach ~1e-6


def check_temperature(temperature: float) -> None:
    """InputError unless the temperature is a positive number that float32 (the latents' dtype) holds."""
    if not 0 < temperature <= float(np.finfo(np.float32).max):  # NaN included
        raise InputError(f"--temperature is {temperature}, expected a number > 0 within float32's range "
                         "(z ~ N(0, T^2); 1 = the model, below 1 = sharper samples).")


def latent_shape(loop: FlowConfig, size: tuple[int, int] | None = None) -> tuple[int, ...]:
    """Shape of one z: the trained event shape, or [C, *size] for an image flow at another size."""
    shape = tuple(int(d) for d in loop.event_shape)
    if size is None:
        return shape
    if len(shape) != 3:
        raise InputError(f"--size is for image flows; this flow's samples are vectors of {shape[0]}.")
    factor = loop.squeeze_factor
    if any(d < factor or d % factor for d in size):
        raise InputError(f"--size {size[0]}x{size[1]}: height and width must be multiples of {factor} "
                         f"(this flow squeezes by {factor}); try {max(factor, size[0] // factor * factor)}x"
                         f"{max(factor, size[1] // factor * factor)}.")
    return (shape[0], *size)


def draw_latents(loop: FlowConfig, n: int, seed: int, temperature: float = 1.0,
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


def _host_direction(loop: FlowConfig, direction: str) -> None:
    if loop.sequential != direction:
        one_pass = "one graph pass" if loop.sequential else "a coupling flow, one pass both ways"
        raise InputError(f"the host loop inverts an autoregressive flow's slow direction; this bundle's {direction} is "
                         f"{one_pass}. Drop --host-loop (MAF: sampling, IAF: density).")


def invert_on_host(runners: Mapping[str, Runner], loop: FlowConfig, given: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The slow direction of an autoregressive flow, one `inverse_step.{k}` call per dimension and layer.

    MAF sampling runs the layers from last to first, IAF density from first to last; pass r of a
    layer keeps the candidate of the r-th dimension of its ordering.
    """
    orderings = loop.orderings
    layers = range(len(orderings))
    total = np.zeros(len(given), np.float32)
    checked = False  # every call takes arrays of the first one's shapes and dtype: validate that one
    for k in (reversed(layers) if loop.sequential == "sample" else layers):
        partial = np.zeros_like(given)
        for i in orderings[k]:
            out = runners[f"inverse_step.{k}"].infer({"partial": partial, "given": given}, checked)
            checked = True
            partial[:, i] = out["candidate"][:, i]
        given, total = partial, total + out["logdet"]
    return given, total


def to_data(runners: Mapping[str, Runner], loop: FlowConfig, z: np.ndarray, host: bool = False) -> np.ndarray:
    """x = flow^-1(z) by the `sample` graph or (MAF) the host loop; NumericalError if it overflows."""
    if host:
        _host_direction(loop, "sample")
        x = invert_on_host(runners, loop, z)[0]
    else:
        x = runners["sample"].infer({"z": z})["x"]
    return _check_finite(x, "sampling (z -> x)", "the inverse overflowed: lower --temperature, or check the model.")


def flow_log_prob(runners: Mapping[str, Runner], loop: FlowConfig, x: np.ndarray, host: bool = False) -> dict[str, np.ndarray]:
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


LAST_BELOW_ONE = np.nextafter(np.float32(1), np.float32(0))  # the largest float32 in [0, 1)


def sample_flow(runners: Mapping[str, Runner], loop: FlowConfig, n: int, seed: int, temperature: float = 1.0,
                size: tuple[int, int] | None = None, host: bool = False) -> np.ndarray:
    """`n` samples [n, *event] at `temperature` (z scaled by it), optionally at another image size. Flows of
    dequantized discrete data (levels > 0) return samples clamped to that data's range [0, 1), so they can be
    scored by the `log_prob` graph (a few samples land a hair outside it)."""
    x = to_data(runners, loop, draw_latents(loop, n, seed, temperature, size), host)
    return np.clip(x, 0, LAST_BELOW_ONE) if loop.levels else x


def dequantize(pixels: np.ndarray, levels: int, seed: int) -> np.ndarray:
    """Uniform dequantization: (pixels + u) / levels in [0, 1), u ~ U[0, 1) from `seed`."""
    if not np.issubdtype(pixels.dtype, np.integer) or pixels.min() < 0 or pixels.max() >= levels:
        raise InputError(f"pixels must be integers in [0, {levels - 1}] (this flow models {levels} levels); "
                         f"got {pixels.dtype} in [{pixels.min()}, {pixels.max()}].")
    u = np.random.default_rng(seed).random(pixels.shape, dtype=np.float32)
    return ((pixels + u) / np.float32(levels)).astype(np.float32)


def bits_per_dim(runners: Mapping[str, Runner], loop: FlowConfig, pixels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Bits per dimension of integer images under the dequantized flow, per example (u drawn from `seed`)."""
    levels = loop.levels
    if not levels:
        raise InputError("bits/dim is for flows of discrete data (images); this flow models continuous vectors.")
    x = dequantize(pixels, levels, seed)
    return bits_from_log_prob(flow_log_prob(runners, loop, x)["log_prob"], x[0].size, levels)


def density_grid(runners: Mapping[str, Runner], loop: FlowConfig, extent: float, resolution: int = 160) -> np.ndarray:
    """log p on a resolution x resolution grid over [-extent, extent]^2 (2-D flows), row 0 at the top."""
    if list(loop.event_shape) != [2]:
        raise InputError(f"a density plot needs a 2-D flow; this one has event shape {loop['event_shape']}.")
    axis = np.linspace(-extent, extent, resolution, dtype=np.float32)
    gx, gy = np.meshgrid(axis, axis[::-1])
    points = np.stack([gx.ravel(), gy.ravel()], 1)
    return flow_log_prob(runners, loop, points)["log_prob"].reshape(resolution, resolution)


def round_trip_error(runners: Mapping[str, Runner], loop: FlowConfig, seed: int = 0) -> float:
    """max |x - sample(log_prob(x).z)| over 4 random inputs at the trained shape, through the graphs."""
    spec = runners["log_prob"].spec
    dims = {"batch": 4} | ({"height": loop.event_shape[1], "width": loop.event_shape[2]} if len(loop.event_shape) == 3 else {})
    x = spec.random_inputs(np.random.default_rng(seed), dims)["x"]
    z = runners["log_prob"].infer({"x": x})["z"]
    return float(np.abs(runners["sample"].infer({"z": z})["x"] - x).max())


def write_flow(out: Path, samples: np.ndarray, loop: FlowConfig, runners: Runners) -> None:
    """2-D flows: a .png density plot with the samples on it; image flows: a grid."""
    if loop.event_shape == [2]:
        from ..images import save_density_plot

        extent = float(np.quantile(np.abs(samples), 0.99)) * 1.3
        save_density_plot(samples, density_grid(runners, loop, extent), extent, out)
        return
    write_images(out, samples, loop, runners)


def check_flow(runners: Runners, loop: FlowConfig, seed: int) -> dict[str, np.ndarray]:
    """Eight samples at temperature 0.8 and their log-density; for MAF / IAF also by the host loop."""
    z = draw_latents(loop, 8, seed, 0.8)
    x = to_data(runners, loop, z)
    out = {"x": x}
    if loop.sequential == "sample":
        out["x.host"] = to_data(runners, loop, z, host=True)
    if loop.sequential == "log_prob":
        out["log_prob"] = flow_log_prob(runners, loop, x)["log_prob"]
        out["log_prob.host"] = flow_log_prob(runners, loop, x, host=True)["log_prob"]
    return out


def round_trip_problems(runners: Runners, loop: FlowConfig) -> list[str]:
    """The `sample` graph must invert the `log_prob` graph."""
    error = round_trip_error(runners, loop)
    if error <= ROUND_TRIP_LIMIT:
        return []
    return [f"'sample' does not invert 'log_prob': max |x - sample(log_prob(x).z)| = {error:.3g} "
            f"(limit {ROUND_TRIP_LIMIT}); check that inverse() undoes forward()"]


def _density(runners: Runners, loop: FlowConfig, x: np.ndarray, labels: np.ndarray | None, host: bool) -> np.ndarray:
    if labels is not None:
        raise InputError("a flow bundle is unconditional; drop the labels.")
    return flow_log_prob(runners, loop, x, host)["log_prob"]


register(LoopKind(
    FlowConfig, "flow", "sample", FlowOptions,
    sample=lambda runners, loop, n, seed, o: sample_flow(runners, loop, n, seed, o.temperature, o.size, o.host),
    check=check_flow, structure=round_trip_problems, log_prob=_density,
    writer=Writer((".png", ".npy"), "flow samples are written as a .png (a grid, or a density plot for 2-D flows) "
                  "or .npy.", write_flow),
))
