"""Denoising loops over a diffusion bundle (numpy only): DDPM, DDIM and annealed Langevin, with
classifier-free guidance, on the host (one `denoiser` call per step) or in the graph (`sampler`).

All randomness is drawn up front from one seed: x_T, then one standard normal draw per step. The
same seed therefore gives the same injected noise to the host loop, the in-graph loop and the same
loop run over the torch model, which is how whole trajectories are compared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backends.base import Runner
from ..errors import InputError
from .generator import check_count, cycle_labels
from .kinds import IMAGES, ImageLayout, LoopKind, Runners, SampleOptions, register
from .schedulers import Scheduler, make_scheduler
from .vae import sigmoid


@dataclass(frozen=True, kw_only=True)
class DiffusionConfig(ImageLayout):
    """`denoiser` (x, t[, label]) -> eps or score and `sampler` (the whole loop in one ONNX Scan) over event_shape.

    `schedulers` lists the schedulers the network was trained for (the first is the default),
    `schedule` is their shared config (saved like a diffusers scheduler config). Conditional models
    have num_classes > 0 and a null label num_classes for classifier-free guidance. Latent diffusion
    adds `decoder`: {"role", "latent_scale"}, the graph that maps the denoised latent to pixels.
    """

    kind = "diffusion"
    event_shape: list[int]
    schedulers: list[str]
    schedule: dict[str, Any]
    num_classes: int = 0
    decoder: dict[str, Any] | None = None

OnStep = Callable[[int, int], None] | None
DEFAULT_STEPS = {"ddpm": None, "ddim": 50, "langevin": 100}  # None: every training step
PROGRESS_CHUNKS = 20  # the in-graph loop runs in this many calls when a progress callback is given


@dataclass(frozen=True)
class DiffusionOptions(SampleOptions):
    """How to denoise: labels (default: cycle), steps (default: the scheduler's), host loop or the sampler
    graph, scheduler (default: the bundle's first), DDIM eta, guidance scale w, CFG batching, progress.

    guidance w: eps = eps(uncond) + w (eps(cond) - eps(uncond)); 1 is plain conditional sampling,
    0 unconditional. batched=False runs cond and uncond as two calls (for comparison). on_step(done,
    total) reports progress (the in-graph loop then runs in PROGRESS_CHUNKS calls).
    """

    labels: np.ndarray | None = None
    steps: int | None = None
    host: bool = False
    scheduler: str | None = None
    eta: float | None = None
    guidance: float | None = None
    batched: bool = True
    on_step: OnStep = None


def scheduler_for(loop: DiffusionConfig, options: DiffusionOptions) -> Scheduler:
    """The configured scheduler with its timesteps set (options.steps: the scheduler's default when None)."""
    name = options.scheduler or loop.schedulers[0]
    if options.eta is not None and name != "ddim":
        raise InputError(f"--eta is a DDIM option; add --scheduler ddim (this run uses {name}).")
    scheduler = make_scheduler(name, loop.schedulers, loop.schedule, **({} if options.eta is None else {"eta": options.eta}))
    default = DEFAULT_STEPS[name] or int(loop.schedule["training_steps"])
    scheduler.set_timesteps(default if options.steps is None else options.steps)
    return scheduler


def check_labels(loop: DiffusionConfig, n: int, labels: np.ndarray | None, guidance: float | None
                 ) -> tuple[np.ndarray | None, float]:
    """(labels [n] or None, guidance scale), or InputError for labels out of range or guidance without classes."""
    classes = loop.num_classes
    if guidance is not None and not classes:
        raise InputError("--guidance needs a class-conditional model trained with a null label; this bundle is "
                         "unconditional. Drop --guidance.")
    return cycle_labels(n, classes, labels), 1.0 if guidance is None else float(guidance)


def network_output(net: Runner, loop: DiffusionConfig, x: np.ndarray, t: int, labels: np.ndarray | None,
                   guidance: float, batched: bool = True) -> np.ndarray:
    """One denoiser evaluation at timestep t; with labels, classifier-free guidance (w = 1: conditional only)."""
    output = net.spec.output_names()[0]
    steps = np.full(len(x), t, np.int64)
    if labels is None:
        return net.infer({"x": x, "t": steps})[output]
    null = np.full_like(labels, loop.num_classes)
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


def draw_noise(loop: DiffusionConfig, scheduler: Scheduler, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(x_T [n, *event] scaled by the scheduler's initial sigma, per-step noise [steps, n, *event]) from `seed`."""
    rng = np.random.default_rng(seed)
    event = tuple(loop.event_shape)
    start = rng.standard_normal((n, *event), dtype=np.float32) * np.float32(scheduler.init_noise_sigma)
    return start, rng.standard_normal((len(scheduler.timesteps), n, *event), dtype=np.float32)


def denoise(runners: Runners, loop: DiffusionConfig, n: int, seed: int, options: DiffusionOptions = DiffusionOptions()
            ) -> np.ndarray:
    """The loop's final x [n, *event]: on the host (one denoiser call per step, two for unbatched CFG) or
    in the sampler graph (one call, or PROGRESS_CHUNKS calls carrying x when on_step is given)."""
    check_count(n)
    scheduler = scheduler_for(loop, options)
    labels, guidance = check_labels(loop, n, options.labels, options.guidance)
    on_step = options.on_step
    x, noise = draw_noise(loop, scheduler, n, seed)
    total = len(scheduler.timesteps)
    if options.host:
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


def sample_diffusion(runners: Runners, loop: DiffusionConfig, n: int, seed: int,
                     options: DiffusionOptions = DiffusionOptions()) -> np.ndarray:
    """`n` samples: the denoised x, decoded to pixel probabilities [n, D] for latent diffusion."""
    x = denoise(runners, loop, n, seed, options)
    decoder = loop.decoder
    if decoder is None:
        return x
    return sigmoid(runners[decoder["role"]].infer({"z": x * np.float32(decoder["latent_scale"])})["logits"])


CHECK_STEPS = {"ddpm": 20, "ddim": 10, "langevin": 3}  # short loops replayed by verify (langevin: per level)
IN_GRAPH_LIMIT = 1e-3  # max |host loop - sampler graph| a diffusion bundle may show on its own backend


def _diffusion_runs(runners: Runners, loop: DiffusionConfig, seed: int, host: bool) -> dict[str, np.ndarray]:
    """Four samples per scheduler (DDIM with eta 0.5; guidance 3 for conditional models), host or in-graph."""
    guidance = 3.0 if loop.num_classes else None
    return {name: denoise(runners, loop, 4, seed, DiffusionOptions(
        steps=CHECK_STEPS[name], host=host, scheduler=name, eta=0.5 if name == "ddim" else None, guidance=guidance))
        for name in loop.schedulers}


def check_diffusion(runners: Runners, loop: DiffusionConfig, seed: int) -> dict[str, np.ndarray]:
    """Short loops per scheduler on the host and in the sampler graph; latent diffusion also decodes."""
    out = {f"x.{k}.host": v for k, v in _diffusion_runs(runners, loop, seed, True).items()}
    out |= {f"x.{k}.graph": v for k, v in _diffusion_runs(runners, loop, seed, False).items()}
    if loop.decoder is not None:
        out["decoded"] = sample_diffusion(runners, loop, 4, seed, DiffusionOptions(steps=CHECK_STEPS["ddim"], scheduler="ddim"))
    return out


def in_graph_problems(runners: Runners, loop: DiffusionConfig) -> list[str]:
    """The sampler graph must reproduce the host loop of every scheduler."""
    host, graph = (_diffusion_runs(runners, loop, 0, h) for h in (True, False))
    gaps = {k: float(np.abs(host[k] - graph[k]).max()) for k in host}
    return [(f"the 'sampler' graph does not reproduce the host loop of '{k}': max |host - graph| = {g:.3g} "
             f"(limit {IN_GRAPH_LIMIT})") for k, g in gaps.items() if not g <= IN_GRAPH_LIMIT]


register(LoopKind(
    DiffusionConfig, "diffusion", "sample", DiffusionOptions, sample=sample_diffusion,
    check=check_diffusion, structure=in_graph_problems, writer=IMAGES,
    quick={"steps": 50, "host": True},  # the quantized denoiser; the Scan sampler's body stays fp32 in int8 modes
    serving={"host": True},  # per-step calls batch across concurrent loops
))
