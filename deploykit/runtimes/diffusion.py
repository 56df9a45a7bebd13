"""Denoising loops over a diffusion bundle (numpy only): DDPM, DDIM, Euler, Euler ancestral, Heun,
DPM-Solver++(2M) and annealed Langevin, with classifier-free guidance, on the host (one `denoiser` call
per network call) or in the graph (`sampler`).

All randomness is drawn up front from one seed: x_T, then one standard normal draw per network call. The
same seed therefore gives the same injected noise to the host loop, the in-graph loop and the same
loop run over the torch model, which is how whole trajectories are compared.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from ..backends.base import Runner
from ..checks import check_count, check_fits
from ..errors import BundleError, InputError, choices
from .generator import cycle_labels
from .kinds import IMAGES, ImageLayout, LoopKind, Runners, SampleOptions, register
from .schedulers import COLUMNS, LEGACY_COLUMNS, SCHEDULERS, Scheduler, make_scheduler
from .schedulers.noise_schedule import scheduler_config
from .vae import sigmoid


@dataclass(frozen=True, kw_only=True)
class ScheduledLoop(ImageLayout):
    """A denoising loop over the scheduler registry: `schedulers` lists the samplers the bundle offers (the first is
    the default), `schedule` is their shared config (a diffusers scheduler config; Langevin: sigmas and step size)."""

    schedulers: list[str]
    schedule: dict[str, Any]

    def validate(self, where: str) -> None:
        """BundleError unless the bundle names known schedulers and a schedule they can run."""
        unknown = [n for n in self.schedulers if n not in SCHEDULERS]
        if not self.schedulers or unknown:
            raise BundleError(f"{where}: 'schedulers' is {self.schedulers!r}; expected a non-empty list of "
                              f"{choices(SCHEDULERS)}; re-export the bundle or upgrade deploykit.")
        try:
            scheduler_config(self.schedule)
        except InputError as exc:
            raise BundleError(f"{where}: 'schedule': {exc} Re-export the bundle.") from exc

    @cached_property
    def planned(self) -> dict[tuple[Any, ...], Scheduler]:
        """Schedulers set up so far, by their options (`scheduler_for`): a table is computed once per loop, not
        once per sample (0.1-0.2 ms, 2-3 % of a DDIM-50 sample at n = 1)."""
        return {}


@dataclass(frozen=True, kw_only=True)
class DiffusionConfig(ScheduledLoop):
    """`denoiser` (x, t[, label]) -> eps or score and `sampler` (the whole loop in one ONNX Scan) over event_shape.

    Conditional models have num_classes > 0 and a null label num_classes for classifier-free guidance. Latent
    diffusion adds `decoder`: {"role", "latent_scale"}, the graph that maps the denoised latent to pixels. `columns`
    names the coefficient columns the sampler graph takes (bundles before Euler/Heun/DPM-Solver: LEGACY_COLUMNS).
    """

    kind = "diffusion"
    event_shape: list[int]
    num_classes: int = 0
    decoder: dict[str, Any] | None = None
    columns: list[str] = field(default_factory=lambda: list(LEGACY_COLUMNS))


OnStep = Callable[[int, int], None] | None
MAX_GUIDANCE = 1e6  # w (cond - uncond) stays far inside float32 (3.4e38) for any network output
PLANNED_MAX = 64  # schedulers a loop keeps set up (distinct scheduler, steps and options)
PROGRESS_CHUNKS = 20  # the in-graph loop runs in this many calls when a progress callback is given


@dataclass(frozen=True)
class DenoisingOptions(SampleOptions):
    """How any denoising loop runs: steps (default: the scheduler's), scheduler (default: the bundle's first), DDIM
    eta and use_clipped_model_output, Karras sigmas (Euler, Euler ancestral, Heun, DPM-Solver++), the guidance scale,
    CFG batching (batched=False runs cond and uncond as two calls, for comparison) and progress: on_step(done, total).
    None: the scheduler config's choice."""

    steps: int | None = None
    scheduler: str | None = None
    eta: float | None = None
    karras: bool | None = None
    clipped_model_output: bool | None = None
    guidance: float | None = None
    batched: bool = True
    on_step: OnStep = None


@dataclass(frozen=True)
class DiffusionOptions(DenoisingOptions):
    """How to denoise: labels (default: cycle), host loop or the sampler graph, and the DenoisingOptions.

    guidance w: out = out(uncond) + w (out(cond) - out(uncond)); 1 is plain conditional sampling,
    0 unconditional, any finite w >= 0 is accepted. With on_step the in-graph loop runs in PROGRESS_CHUNKS calls.

    host None picks the faster loop: the sampler graph. Its label input is [labels] at w = 1 (n rows per call) and
    [labels; null labels] when guided (2n). A bundle whose sampler takes labels [n] alone (exported by an earlier
    deploykit) evaluates 2n rows even at w = 1, so it samples conditional-only on the host, one call of n per step.
    """

    labels: np.ndarray | None = None
    host: bool | None = None


def scheduler_for(loop: ScheduledLoop, options: DenoisingOptions) -> Scheduler:
    """The configured scheduler with its timesteps set (options.steps: the scheduler's default when None); a copy
    of the one `loop.planned` keeps, whose step() history is its own."""
    name = options.scheduler or loop.schedulers[0]
    key = (name, options.steps, options.eta, options.karras, options.clipped_model_output)
    if key not in loop.planned:
        config = scheduler_config(loop.schedule)
        scheduler = make_scheduler(name, loop.schedulers, config, eta=options.eta, karras=options.karras,
                                   clipped_model_output=options.clipped_model_output)
        default = SCHEDULERS[name].default_steps or int(config.get("num_train_timesteps", 1000))
        scheduler.set_timesteps(default if options.steps is None else options.steps)
        if len(loop.planned) >= PLANNED_MAX:
            loop.planned.clear()
        loop.planned[key] = scheduler
    return copy.copy(loop.planned[key])


def check_labels(loop: DiffusionConfig, n: int, labels: np.ndarray | None, guidance: float | None
                 ) -> tuple[np.ndarray | None, float]:
    """(labels [n] or None, guidance scale), or InputError for labels out of range, guidance without classes
    or a guidance scale that is negative or not finite."""
    classes = loop.num_classes
    if guidance is not None and not classes:
        raise InputError("--guidance needs a class-conditional model trained with a null label; this bundle is "
                         "unconditional. Drop --guidance.")
    if guidance is not None and not (np.isfinite(guidance) and 0 <= guidance <= MAX_GUIDANCE):
        raise InputError(f"--guidance is {guidance}, expected a finite scale >= 0 and at most {MAX_GUIDANCE:g} (0: "
                         "unconditional, 1: conditional, 5-9: typical classifier-free guidance; the graphs compute in "
                         "float32).")
    return cycle_labels(n, classes, labels), 1.0 if guidance is None else float(guidance)


def timestep_feed(spec_dtype: str, timesteps: np.ndarray) -> np.ndarray:
    """Timesteps in the graph's t dtype: float32 as they are, integers rounded (Karras and linspace timesteps
    are fractional; an integer-t network sees the nearest one)."""
    dtype = np.dtype(spec_dtype)
    return np.round(timesteps).astype(dtype) if np.issubdtype(dtype, np.integer) else timesteps.astype(dtype)


def _dtype_of(net: Runner, name: str) -> str:
    return next(s.dtype for s in net.spec.inputs if s.name == name)


class Denoiser:
    """The denoiser as a host loop calls it, n rows at a time: what stays fixed over the loop (output name, t dtype,
    the conditioning feeds: labels, prompt embeddings) is built once, so a step costs the graph call and the guidance
    mix. `uncond` (the null condition's feeds) makes it classifier-free guidance at scale `guidance`: one call of 2n
    rows when `batched`, else two calls of n."""

    def __init__(self, net: Runner, n: int, cond: dict[str, np.ndarray], uncond: dict[str, np.ndarray] | None = None,
                 guidance: float = 1.0, batched: bool = True) -> None:
        self.net, self.n, self.output = net, n, net.spec.output_names()[0]
        self.dtype = _dtype_of(net, "t")
        self.guidance = np.float32(guidance)
        self.mode = "single" if uncond is None else "batched" if batched else "split"
        self.cond = {k: np.concatenate([v, uncond[k]]) for k, v in cond.items()} if self.mode == "batched" else cond
        self.uncond = uncond or {}

    def __call__(self, x: np.ndarray, t: float | np.number, checked: bool = False) -> np.ndarray:
        """One evaluation at timestep t, as the graph takes it (`timestep_feed`). `checked`: the loop validated these
        feeds' shapes and ranges on its first call (Runner.infer)."""
        steps = np.full(2 * self.n if self.mode == "batched" else self.n, t, self.dtype)
        if self.mode == "single":
            return self.net.infer({"x": x, "t": steps, **self.cond}, checked)[self.output]
        if self.mode == "batched":
            both = self.net.infer({"x": np.concatenate([x, x]), "t": steps, **self.cond}, checked)[self.output]
            cond, uncond = both[: self.n], both[self.n:]
        else:
            cond = self.net.infer({"x": x, "t": steps, **self.cond}, checked)[self.output]
            uncond = self.net.infer({"x": x, "t": steps, **self.uncond}, checked)[self.output]
        return uncond + self.guidance * (cond - uncond)


def host_loop(denoiser: Denoiser, scheduler: Scheduler, x: np.ndarray, noise: np.ndarray, on_step: OnStep = None
              ) -> np.ndarray:
    """The denoised x after one denoiser call and one scheduler step per network call, on the host."""
    total = len(scheduler.timesteps)
    for i, t in enumerate(timestep_feed(denoiser.dtype, scheduler.timesteps)):
        out = denoiser(scheduler.scale_model_input(x, i), t, checked=i > 0)
        x = scheduler.step(out, i, x, noise[i])
        if on_step:
            on_step(i + 1, total)
    return x


def draw_noise(event_shape: Sequence[int], scheduler: Scheduler, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(x_T [n, *event] scaled by the scheduler's initial sigma, per-call noise [calls, n, *event]) from `seed`;
    InputError, before drawing, when that noise would not fit in the memory available."""
    event = tuple(event_shape)
    need = (len(scheduler.timesteps) + 1) * n * int(np.prod(event)) * 4
    check_fits(need, f"--n {n} with {len(scheduler.timesteps)} network calls of injected noise",
               "sample fewer at a time (several runs with different --seed) or use fewer --steps")
    rng = np.random.default_rng(seed)
    start = rng.standard_normal((n, *event), dtype=np.float32) * np.float32(scheduler.init_noise_sigma)
    return start, rng.standard_normal((len(scheduler.timesteps), n, *event), dtype=np.float32)


def denoise(runners: Runners, loop: DiffusionConfig, n: int, seed: int, options: DiffusionOptions = DiffusionOptions()
            ) -> np.ndarray:
    """The loop's final x [n, *event]: on the host (one denoiser call per network call, two for unbatched CFG)
    or in the sampler graph (one call, or PROGRESS_CHUNKS calls carrying x and the history when on_step is given)."""
    check_count(n)
    scheduler = scheduler_for(loop, options)
    labels, guidance = check_labels(loop, n, options.labels, options.guidance)
    on_step = options.on_step
    x, noise = draw_noise(loop.event_shape, scheduler, n, seed)
    total = len(scheduler.timesteps)
    sampler = runners["sampler"]
    # the sampler takes labels as [rows, n] (before: [n], the null row made inside, so always 2n rows)
    label_rows = labels is not None and len(next(s.shape for s in sampler.spec.inputs if s.name == "label")) == 2
    if options.host or (options.host is None and labels is not None and guidance == 1.0 and not label_rows):
        guided = labels is not None and guidance != 1.0
        denoiser = Denoiser(runners["denoiser"], n, {} if labels is None else {"label": labels},
                            {"label": np.full_like(labels, loop.num_classes)} if guided else None, guidance,
                            options.batched)
        return host_loop(denoiser, scheduler, x, noise, on_step)
    legacy = tuple(loop.columns) == LEGACY_COLUMNS
    if not legacy and tuple(loop.columns) != COLUMNS:
        raise BundleError(f"loop: sampler columns {loop.columns} are unknown to this deploykit; upgrade it or re-export.")
    table = scheduler.legacy_table() if legacy else scheduler.table
    timesteps = timestep_feed(_dtype_of(sampler, "timesteps"), scheduler.timesteps)
    state = {} if legacy else {"history": np.zeros_like(x)}
    chunk = total if on_step is None else -(-total // PROGRESS_CHUNKS)
    if label_rows:  # [labels], or [labels; null labels] when guided: conditional-only sampling evaluates n rows, not 2n
        labels = labels[None] if guidance == 1.0 else np.stack([labels, np.full_like(labels, loop.num_classes)])
    extra = {} if labels is None else {"label": labels, "guidance": np.asarray([guidance], np.float32)}
    for start in range(0, total, chunk):
        part = slice(start, start + chunk)
        feeds = {"x": x, "noise": noise[part], "timesteps": timesteps[part], "coefficients": table[part]}
        result = sampler.infer(feeds | state | extra)
        x = result["sample"]
        state = {k: result[f"{k}_out"] for k in state}
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


# max |host loop - sampler graph| a diffusion bundle may show on its own backend: 1e-3, or 1e-4 of the starting noise
# scale when that is larger (sigma-space samplers start at sigma_max, ~157 for diffusers' default linear betas; the
# Scan body's kernels round differently from the denoiser graph's, and early calls see x at that scale)
IN_GRAPH_LIMIT, IN_GRAPH_RELATIVE = 1e-3, 1e-4


def _diffusion_runs(runners: Runners, loop: DiffusionConfig, seed: int, host: bool) -> dict[str, np.ndarray]:
    """Four samples per scheduler (its short loop; DDIM with eta 0.5; guidance 3 for conditional models), host
    or in-graph."""
    guidance = 3.0 if loop.num_classes else None
    return {name: denoise(runners, loop, 4, seed, DiffusionOptions(
        steps=SCHEDULERS[name].short_steps, host=host, scheduler=name, eta=0.5 if name == "ddim" else None,
        guidance=guidance)) for name in loop.schedulers}


def check_diffusion(runners: Runners, loop: DiffusionConfig, seed: int) -> dict[str, np.ndarray]:
    """Short loops per scheduler on the host and in the sampler graph; latent diffusion also decodes."""
    out = {f"x.{k}.host": v for k, v in _diffusion_runs(runners, loop, seed, True).items()}
    out |= {f"x.{k}.graph": v for k, v in _diffusion_runs(runners, loop, seed, False).items()}
    if loop.decoder is not None:
        out["decoded"] = sample_diffusion(runners, loop, 4, seed, DiffusionOptions(steps=SCHEDULERS["ddim"].short_steps,
                                                                            scheduler="ddim"))
    return out


def in_graph_problems(runners: Runners, loop: DiffusionConfig) -> list[str]:
    """The sampler graph must reproduce the host loop of every scheduler."""
    host, graph = (_diffusion_runs(runners, loop, 0, h) for h in (True, False))
    problems = []
    for name in loop.schedulers:
        start = scheduler_for(loop, DiffusionOptions(scheduler=name, steps=SCHEDULERS[name].short_steps)).init_noise_sigma
        limit = max(IN_GRAPH_LIMIT, IN_GRAPH_RELATIVE * start)
        gap = float(np.abs(host[name] - graph[name]).max())
        if not gap <= limit:
            problems.append(f"the 'sampler' graph does not reproduce the host loop of '{name}': max |host - graph| = "
                            f"{gap:.3g} (limit {limit:.3g})")
    return problems


register(LoopKind(
    DiffusionConfig, "diffusion", "sample", DiffusionOptions, sample=sample_diffusion,
    check=check_diffusion, structure=in_graph_problems, writer=IMAGES,
    quick={"steps": 50, "host": True},  # the quantized denoiser; the Scan sampler's body stays fp32 in int8 modes
    serving={"host": True},  # per-step calls batch across concurrent loops
))
