"""Diffusion and score families: DDPM/DDIM eps-prediction networks, latent diffusion and NCSN score networks.

Each bundle holds the network as a `denoiser` graph (one call; the numpy schedulers in
runtimes/schedulers run the loop on the host) and a `sampler` graph: the whole loop as a torch
scan (ONNX Scan) over the scheduler's table of per-call coefficients, carrying the sample and one
history buffer, so one graph serves DDPM, DDIM at any eta, Euler, Euler ancestral, Heun and
DPM-Solver++(2M) (Karras sigmas or not) at any number of steps, and classifier-free guidance at any scale.
"""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise
from typing import Any

import torch
from torch import nn
from torch._higher_order_ops.scan import scan

from ..errors import ExportError, InputError
from ..runtimes.diffusion import DiffusionConfig
from ..runtimes.schedulers import COLUMNS, SCHEDULERS, for_diffusers_class
from ..runtimes.schedulers.noise_schedule import PREDICTIONS, scheduler_config, training_steps, zoo_config
from ..specs import DimRule, TensorSpec
from .latent import DecoderGraph
from .registry import Family, Role, Tolerance, attribute, register

DENOISER_PROTOCOL = (
    "forward(x [batch, *event_shape], t [batch][, label int64 [batch]]) -> the prediction (eps, v or x0) of x's "
    "shape; attributes `event_shape`, `num_classes` (0: unconditional; otherwise label num_classes is the null label "
    "of classifier-free guidance) and either `scheduler_config` (a diffusers scheduler config dict: betas, "
    "prediction_type, spacing, clipping) or `training_steps`, `schedule` ('linear' or 'cosine') and `clip_sample` "
    "(bound on the predicted x0, 0 for none; eps prediction). Optional `timestep_dtype` ('int64', the default, or "
    "'float32' for networks that take fractional timesteps)."
)
LATENT_PROTOCOL = (
    "`vae` with decode(z [batch, latent_dim]) -> Bernoulli logits [batch, D] and `latent_dim`, `denoiser` following "
    "the ddpm protocol over vectors of latent_dim, `latent_scale` (latents = denoiser samples * latent_scale) and "
    "`image_shape`."
)
SCORE_PROTOCOL = (
    "forward(x [batch, *event_shape], t int64 [batch]) -> score of x's shape at noise level t (0 = largest sigma); "
    "attributes `event_shape`, `sigma_values` (descending) and `step_size` (Langevin step at the smallest sigma)."
)


def affine_update(x: torch.Tensor, h: torch.Tensor, out: torch.Tensor, noise: torch.Tensor, row: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The schedulers' step (see runtimes/schedulers) in torch: (x_next, h_next) by a row of COLUMNS."""
    _, cx, co, clip, p, q, r, s, u, hp, hq = row.unbind(0)
    x0 = torch.minimum(torch.maximum(cx * x + co * out, -clip), clip)
    return p * x0 + q * x + r * out + s * noise + u * h, hp * x0 + hq * x


def guided_output(net: nn.Module, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None,
                  guidance: torch.Tensor | None) -> torch.Tensor:
    """The network output. `labels` [rows, batch]: one row is conditional sampling, one call of batch rows; a
    second row of null labels makes it classifier-free guidance uncond + w (cond - uncond), one call of 2 * batch
    (expand/flatten: torch.onnx fails on cat in a scan body). With one row, cond - uncond is exactly 0."""
    if labels is None:
        return net(x, t)
    rows = labels.shape[0]
    out = net(x.expand(rows, *x.shape).flatten(0, 1), t.expand(rows, *t.shape).flatten(0, 1),
              labels.flatten(0, 1)).unflatten(0, (rows, -1))
    cond, uncond = out[0], out[-1]
    return uncond + guidance[0] * (cond - uncond)  # guidance [1]


class SamplerGraph(nn.Module):
    """(x, history) -> (x, history) after scanning over (timesteps [steps], coefficients [steps, COLUMNS],
    noise [steps, batch, ...]); the network sees cin * x at each call."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, history: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                coefficients: torch.Tensor, label: torch.Tensor | None = None, guidance: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        def body(carry: tuple[torch.Tensor, torch.Tensor], step: tuple[torch.Tensor, ...]
                 ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
            (x, h), (t, row, z) = carry, step
            out = guided_output(self.net, x * row[0], t.expand(x.shape[0]), label, guidance)
            return affine_update(x, h, out, z, row), row[:1].clone()

        x, h = scan(body, (x, history), (timesteps, coefficients, noise))[0]
        return x, h


def _event(model: nn.Module, family: str, protocol: str) -> tuple[int, ...]:
    return tuple(int(d) for d in attribute(model, "event_shape", family, protocol))


def _network_roles(net: nn.Module, event: tuple[int, ...], t_high: int, classes: int, output: str,
                   t_dtype: str = "int64") -> dict[str, Role]:
    """`denoiser` (one call) and `sampler` (the whole loop) roles of a network."""
    x = TensorSpec("x", "float32", ("batch", *event))
    t = TensorSpec("t", t_dtype, ("batch",), high=t_high)
    loop_in = (x, TensorSpec("history", "float32", ("batch", *event)),
               TensorSpec("noise", "float32", ("steps", "batch", *event)),
               TensorSpec("timesteps", t_dtype, ("steps",), high=t_high),
               TensorSpec("coefficients", "float32", ("steps", len(COLUMNS))))
    net_in: tuple[TensorSpec, ...] = (x, t)
    if classes:  # guidance has no upper bound: the loop checks it is finite and >= 0 (--guidance)
        label = TensorSpec("label", "int64", ("batch",), high=classes + 1)
        rows = TensorSpec("label", "int64", ("rows", "batch"), high=classes + 1)  # [labels] or [labels; null labels]
        net_in, loop_in = (*net_in, label), (*loop_in, rows, TensorSpec("guidance", "float32", (1,)))
    return {"denoiser": Role(net, net_in, (output,), {"batch": 2}),
            "sampler": Role(SamplerGraph(net), loop_in, ("sample", "history_out"), {"batch": 2, "steps": 3, "rows": 2},
                            {"rows": DimRule(min=1, max=2)})}


def _schedule(net: nn.Module, family: str, protocol: str) -> dict[str, Any]:
    """The network's diffusers scheduler config: its own `scheduler_config`, or the zoo-style attributes'."""
    given = getattr(net, "scheduler_config", None)
    if given is None:
        config = zoo_config(str(attribute(net, "schedule", family, protocol)),
                            int(attribute(net, "training_steps", family, protocol)),
                            float(attribute(net, "clip_sample", family, protocol)))
    else:
        config = dict(given)
    try:
        for_diffusers_class(config.get("_class_name"))
        return scheduler_config(config) | ({"_class_name": config["_class_name"]} if "_class_name" in config else {})
    except InputError as exc:
        raise ExportError(f"{type(net).__name__}: {exc}") from exc


def _timestep_dtype(net: nn.Module) -> str:
    dtype = str(getattr(net, "timestep_dtype", "int64"))
    if dtype not in ("int64", "float32"):
        raise ExportError(f"{type(net).__name__}.timestep_dtype is {dtype!r}; use 'int64' or 'float32'.")
    return dtype


def _ddpm_roles(model: nn.Module) -> dict[str, Role]:
    config = _schedule(model, "ddpm", DENOISER_PROTOCOL)
    classes = int(attribute(model, "num_classes", "ddpm", DENOISER_PROTOCOL))
    output = PREDICTIONS[config.get("prediction_type", "epsilon")]
    return _network_roles(model, _event(model, "ddpm", DENOISER_PROTOCOL), training_steps(config), classes, output,
                          _timestep_dtype(model))


def samplers_of(config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(the schedule without its `_class_name`, every DDPM-parametrized sampler with the config's own scheduler class
    first: DDPM when it names none of them)."""
    schedule = dict(config)
    first = for_diffusers_class(schedule.pop("_class_name", None))
    return schedule, [first] + [n for n in SCHEDULERS if n not in ("langevin", first)]


def _ddpm_loop(model: nn.Module) -> DiffusionConfig:
    """Every DDPM-family sampler, the config's own scheduler class first."""
    event = _event(model, "ddpm", DENOISER_PROTOCOL)
    schedule, samplers = samplers_of(_schedule(model, "ddpm", DENOISER_PROTOCOL))
    return DiffusionConfig(event_shape=list(event), num_classes=int(model.num_classes), schedule=schedule,
                           schedulers=samplers, columns=list(COLUMNS),
                           value_range=[-1.0, 1.0] if len(event) == 3 else [0.0, 1.0])


def _latent_parts(model: nn.Module) -> tuple[nn.Module, nn.Module, int]:
    vae = attribute(model, "vae", "latent-diffusion", LATENT_PROTOCOL)
    denoiser = attribute(model, "denoiser", "latent-diffusion", LATENT_PROTOCOL)
    dim = int(attribute(vae, "latent_dim", "latent-diffusion", LATENT_PROTOCOL))
    if _event(denoiser, "latent-diffusion", LATENT_PROTOCOL) != (dim,):
        raise ExportError(f"the denoiser's event_shape {list(denoiser.event_shape)} is not the VAE's latent [{dim}].")
    return vae, denoiser, dim


def _latent_roles(model: nn.Module) -> dict[str, Role]:
    vae, denoiser, dim = _latent_parts(model)
    roles = _ddpm_roles(denoiser)
    roles["decoder"] = Role(DecoderGraph(vae), (TensorSpec("z", "float32", ("batch", dim)),), ("logits",), {"batch": 2})
    return roles


def _latent_loop(model: nn.Module) -> DiffusionConfig:
    _, denoiser, _ = _latent_parts(model)
    scale = float(attribute(model, "latent_scale", "latent-diffusion", LATENT_PROTOCOL))
    image = [int(d) for d in attribute(model, "image_shape", "latent-diffusion", LATENT_PROTOCOL)]
    return replace(_ddpm_loop(denoiser), decoder={"role": "decoder", "latent_scale": scale}, image_shape=image,
                   value_range=[0.0, 1.0])


def _score_roles(model: nn.Module) -> dict[str, Role]:
    levels = len(attribute(model, "sigma_values", "ncsn", SCORE_PROTOCOL))
    return _network_roles(model, _event(model, "ncsn", SCORE_PROTOCOL), levels, 0, "score")


def _score_loop(model: nn.Module) -> dict[str, Any]:
    sigmas = [float(s) for s in attribute(model, "sigma_values", "ncsn", SCORE_PROTOCOL)]
    if any(b >= a for a, b in pairwise(sigmas)):
        raise ExportError(f"{type(model).__name__}.sigma_values must be descending, got {sigmas}.")
    step = float(attribute(model, "step_size", "ncsn", SCORE_PROTOCOL))
    return DiffusionConfig(event_shape=list(_event(model, "ncsn", SCORE_PROTOCOL)), num_classes=0,
                           schedulers=["langevin"], schedule={"sigmas": sigmas, "step_size": step}, columns=list(COLUMNS))


SHAPES = [{"batch": 1, "steps": 2, "rows": 1}, {"batch": 5, "steps": 3, "rows": 2}]  # rows: conditional models
# Tolerances (fp32; see README): one denoiser call stays within 1e-5 (GroupNorm sums in another order);
# the bundle's loop check replays 20-step loops, where the error of each call passes through the
# scheduler's 1/sqrt(abar_t) and the clip, so the family tolerance is set by the loops.
register(Family("ddpm", "DDPM/DDIM eps-prediction network (optionally class-conditional with a null label for "
                "classifier-free guidance): denoiser and in-graph sampler graphs", DENOISER_PROTOCOL, _ddpm_roles,
                lambda m: SHAPES, Tolerance(1e-4, 1e-4), ("diffusion",), _ddpm_loop))
register(Family("latent-diffusion", "latent diffusion: a latent denoiser, its in-graph sampler and the VAE decoder",
                LATENT_PROTOCOL, _latent_roles, lambda m: SHAPES, Tolerance(1e-4, 1e-4), ("diffusion",), _latent_loop))
register(Family("ncsn", "noise-conditional score network sampled by annealed Langevin dynamics (host or in-graph)",
                SCORE_PROTOCOL, _score_roles, lambda m: SHAPES, Tolerance(1e-4, 1e-4), ("diffusion",), _score_loop))
