"""Denoising loops over a diffusion bundle (numpy only): DDPM, DDIM and annealed Langevin, with
classifier-free guidance, on the host (one `denoiser` call per step) or in the graph (`sampler`).

All randomness is drawn up front from one seed: x_T, then one standard normal draw per step. The
same seed therefore gives the same injected noise to the host loop, the in-graph loop and the same
loop run over the torch model, which is how whole trajectories are compared.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from .base import Runner
from .generator import check_count, cycle_labels
from .schedulers import Scheduler, make_scheduler
from .vae import sigmoid

OnStep = Callable[[int, int], None] | None
DEFAULT_STEPS = {"ddpm": None, "ddim": 50, "langevin": 100}  # None: every training step
PROGRESS_CHUNKS = 20  # the in-graph loop runs in this many calls when a progress callback is given


@dataclass(frozen=True)
class DiffusionOptions:
    """How to denoise: scheduler (default: the bundle's first), DDIM eta, guidance scale w, CFG batching.

    guidance w: eps = eps(uncond) + w (eps(cond) - eps(uncond)); 1 is plain conditional sampling,
    0 unconditional. batched=False runs cond and uncond as two calls (for comparison).
    """

    scheduler: str | None = None
    eta: float | None = None
    guidance: float | None = None
    batched: bool = True


def scheduler_for(loop: Mapping[str, Any], options: DiffusionOptions, steps: int | None) -> Scheduler:
    """The configured scheduler with its timesteps set (steps: the scheduler's default when None)."""
    name = options.scheduler or loop["schedulers"][0]
    if options.eta is not None and name != "ddim":
        raise InputError(f"--eta is a DDIM option; add --scheduler ddim (this run uses {name}).")
    scheduler = make_scheduler(name, loop, **({} if options.eta is None else {"eta": options.eta}))
    default = DEFAULT_STEPS[name] or int(loop["schedule"]["training_steps"])
    scheduler.set_timesteps(default if steps is None else steps)
    return scheduler


def check_labels(loop: Mapping[str, Any], n: int, labels: np.ndarray | None, guidance: float | None
                 ) -> tuple[np.ndarray | None, float]:
    """(labels [n] or None, guidance scale), or InputError for labels out of range or guidance without classes."""
    classes = int(loop.get("num_classes", 0))
    if guidance is not None and not classes:
        raise InputError("--guidance needs a class-conditional model trained with a null label; this bundle is "
                         "unconditional. Drop --guidance.")
    return cycle_labels(n, classes, labels), 1.0 if guidance is None else float(guidance)


def network_output(net: Runner, loop: Mapping[str, Any], x: np.ndarray, t: int, labels: np.ndarray | None,
                   guidance: float, batched: bool = True) -> np.ndarray:
    """One denoiser evaluation at timestep t; with labels, classifier-free guidance (w = 1: conditional only)."""
    output = net.spec.output_names()[0]
    steps = np.full(len(x), t, np.int64)
    if labels is None:
        return net.infer({"x": x, "t": steps})[output]
    null = np.full_like(labels, int(loop["num_classes"]))
    if guidance == 1.0:
        return net.infer({"x": x, "t": steps, "label": labels})[output]
    if batched:
        both = net.infer({"x": np.concatenate([x, x]), "t": np.concatenate([steps, steps]),
                          "label": np.concatenate([labels, null])})[output]
        cond, uncond = both[: len(x)], both[len(x):]
    else:
        cond = net.infer({"x": x, "t": steps, "label": labels})[output]
        uncond = net.infer({"x": x, "t": steps, "label": null})[output]
    return (uncond + np.float32(guidance) * (cond - uncond)).astype(np.float32)


def draw_noise(loop: Mapping[str, Any], scheduler: Scheduler, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(x_T [n, *event] scaled by the scheduler's initial sigma, per-step noise [steps, n, *event]) from `seed`."""
    rng = np.random.default_rng(seed)
    event = tuple(loop["event_shape"])
    start = rng.standard_normal((n, *event), dtype=np.float32) * np.float32(scheduler.init_noise_sigma)
    return start, rng.standard_normal((len(scheduler.timesteps), n, *event), dtype=np.float32)


def denoise(runners: Mapping[str, Runner], loop: Mapping[str, Any], n: int, seed: int, labels: np.ndarray | None = None,
            steps: int | None = None, host: bool = False, options: DiffusionOptions = DiffusionOptions(),
            on_step: OnStep = None) -> np.ndarray:
    """The loop's final x [n, *event]: on the host (one denoiser call per step, two for unbatched CFG) or
    in the sampler graph (one call, or PROGRESS_CHUNKS calls carrying x when on_step is given)."""
    check_count(n)
    scheduler = scheduler_for(loop, options, steps)
    labels, guidance = check_labels(loop, n, labels, options.guidance)
    x, noise = draw_noise(loop, scheduler, n, seed)
    total = len(scheduler.timesteps)
    if host:
        for i, t in enumerate(scheduler.timesteps):
            out = network_output(runners["denoiser"], loop, x, int(t), labels, guidance, options.batched)
            x = scheduler.step(out, int(t), x, noise[i])
            if on_step:
                on_step(i + 1, total)
        return x
    chunk = total if on_step is None else -(-total // PROGRESS_CHUNKS)
    extra = {} if labels is None else {"label": labels, "guidance": np.asarray([guidance], np.float32)}
    for start in range(0, total, chunk):
        part = slice(start, start + chunk)
        feeds = {"x": x, "noise": noise[part], "timesteps": scheduler.timesteps[part], "coefficients": scheduler.table[part]}
        x = runners["sampler"].infer(feeds | extra)["sample"]
        if on_step:
            on_step(min(start + chunk, total), total)
    return x


def sample_diffusion(runners: Mapping[str, Runner], loop: Mapping[str, Any], n: int, seed: int,
                     labels: np.ndarray | None = None, steps: int | None = None, host: bool = False,
                     options: DiffusionOptions = DiffusionOptions(), on_step: OnStep = None) -> np.ndarray:
    """`n` samples: the denoised x, decoded to pixel probabilities [n, D] for latent diffusion."""
    x = denoise(runners, loop, n, seed, labels, steps, host, options, on_step)
    if "decoder" not in loop:
        return x
    decoder = loop["decoder"]
    return sigmoid(runners[decoder["role"]].infer({"z": x * np.float32(decoder["latent_scale"])})["logits"])
