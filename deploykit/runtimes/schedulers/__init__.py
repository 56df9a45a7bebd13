"""Numpy schedulers for denoising loops, shaped like diffusers': set_timesteps() / timesteps / step().

Every scheduler here reduces one network call to the same affine update of the sample x and one
history buffer h, given the network output `out` (eps, v, x0 or a score) at the scaled input cin * x
and injected standard normal noise:

    x0     = clip(cx * x + co * out, -clip, clip)                   # the predicted clean sample
    x_next = p * x0 + q * x + r * out + s * noise + u * h
    h_next = hp * x0 + hq * x                                       # DPM-Solver++: the last x0; Heun: the midpoint sum

`set_timesteps(steps)` fills `timesteps` (the network's t input per call, float, in sampling order)
and `table` (one row of COLUMNS per call). The host loop applies `step()`; the exported sampler graph
applies the very same rows inside an ONNX Scan carrying (x, h), so the two loops differ only by where
they run. Schedulers register by name in SCHEDULERS; one module per algorithm family: ddpm.py, ddim.py,
sigmas.py (Euler, Euler ancestral, Heun), dpm_solver.py, langevin.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from ...errors import InputError, choices

COLUMNS = ("cin", "cx", "co", "clip", "p", "q", "r", "s", "u", "hp", "hq")
LEGACY_COLUMNS = ("a", "b", "clip", "p", "q", "r", "s")  # sampler graphs before the history buffer: x0 = (x - a out) b
OPTION_FLAGS = {"eta": "--eta", "karras": "--karras", "clipped_model_output": "--clipped-model-output"}
OPTION_KEYS = {"eta": "eta", "karras": "karras", "clipped_model_output": "use_clipped_model_output"}  # config keys


def _weighted_sum(terms: Sequence[tuple[float, np.ndarray | None]]) -> np.ndarray | None:
    """sum of c * a in float32, left to right, leaving out terms with c = 0 or a = None (zeros): adding 0 to a sum
    does not change it, so the host step does only the work its scheduler needs (the graph computes every term).
    None when every term is left out."""
    total = None
    for c, a in terms:
        if c and a is not None:
            total = c * a if total is None else total + c * a
    return total


def affine_step(x: np.ndarray, h: np.ndarray | None, out: np.ndarray, noise: np.ndarray, row: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """(x_next, h_next) by one row of COLUMNS, in float32 like the graph (x, h, out, noise are float32; the row's
    float32 coefficients as Python floats keep every product float32). A history of None is all zeros."""
    _, cx, co, clip, p, q, r, s, u, hp, hq = row.tolist()
    x0 = _weighted_sum(((cx, x), (co, out)))
    x0 = np.zeros_like(x) if x0 is None else x0
    if clip != np.inf:  # np.clip costs more than the rest of the step
        x0 = np.minimum(np.maximum(x0, -clip), clip)
    x_next = _weighted_sum(((p, x0), (q, x), (r, out), (s, noise), (u, h)))
    return np.zeros_like(x) if x_next is None else x_next, _weighted_sum(((hp, x0), (hq, x)))


def row(cin: float = 1.0, cx: float = 0.0, co: float = 0.0, clip: float = np.inf, p: float = 0.0, q: float = 0.0,
        r: float = 0.0, s: float = 0.0, u: float = 0.0, hp: float = 0.0, hq: float = 0.0) -> tuple[float, ...]:
    """One table row by column name (unnamed coefficients are 0, the input scale 1, no clipping)."""
    return (cin, cx, co, clip, p, q, r, s, u, hp, hq)


class Scheduler:
    """Base of the schedulers: a config dict (a diffusers scheduler config, saved as JSON in the bundle), the
    options it takes, and after set_timesteps the network timesteps, the table and the starting noise scale."""

    name: ClassVar[str] = ""
    default_steps: ClassVar[int | None] = None  # None: every training step
    short_steps: ClassVar[int] = 10  # the short loop a bundle's export-time check runs (and verify replays)
    order: ClassVar[int] = 1  # network calls per step (Heun: 2), as diffusers' `order`
    options: ClassVar[tuple[str, ...]] = ()  # keys of OPTION_FLAGS this scheduler takes
    diffusers_class: ClassVar[str] = ""  # the diffusers scheduler it reproduces (a pipeline's default)

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)
        self.timesteps = np.zeros(0, np.float64)
        self.table = np.zeros((0, len(COLUMNS)), np.float32)
        self.init_noise_sigma = 1.0  # standard deviation of the starting noise x_T
        self.levels = np.zeros((0, 2), np.float64)  # per call (a, b): the sample there is a x0 + b noise (image-to-image)
        self._restart: np.ndarray | None = None  # per call, the row a run starting there takes (None: the table's)
        self._history: np.ndarray | None = None

    def set_timesteps(self, steps: int) -> None:
        """Choose `steps` sampling steps; fills `timesteps`, `table` and `init_noise_sigma`."""
        raise NotImplementedError

    def scale_model_input(self, sample: np.ndarray, index: int) -> np.ndarray:
        """The network's input at call `index` (Euler-style samplers feed x / sqrt(sigma^2 + 1))."""
        scale = float(self.table[index, 0])
        return sample if scale == 1.0 else sample * scale  # float32 stays float32

    def step(self, out: np.ndarray, index: int, sample: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """The sample after call `index`, given the network output there and injected noise (the history
        buffer of multistep and two-stage samplers is kept here, reset at index 0)."""
        history = None if index == 0 else self._history  # None: zeros
        sample, self._history = affine_step(sample, history, out, noise, self.table[index])
        return sample

    def legacy_table(self) -> np.ndarray:
        """The table in LEGACY_COLUMNS, for sampler graphs exported before the history buffer; InputError when
        this loop needs what those graphs lack (input scaling, history, an x0 that ignores x but not out)."""
        t = self.table.astype(np.float64)
        cin, cx, co, u, hp, hq = t[:, 0], t[:, 1], t[:, 2], t[:, 8], t[:, 9], t[:, 10]
        fits = np.all(cin == 1) and not np.any(u) and not np.any(hp) and not np.any(hq) and np.all((cx != 0) | (co == 0))
        if not fits:
            raise InputError(f"--scheduler {self.name}: this bundle's in-graph sampler predates it; add --host-loop "
                             "or re-export the bundle.")
        a = np.divide(-co, cx, out=np.zeros_like(co), where=cx != 0)
        return np.column_stack([a, cx, t[:, 3:8]]).astype(np.float32)

    def start_at(self, steps: int, strength: float) -> None:
        """Run only the last `strength` of the `steps` steps, as diffusers' image-to-image pipelines (t_start =
        steps - int(steps * strength), calls from t_start * order on; a multistep solver's first call is first
        order). InputError when no step would run."""
        if not 0.0 < strength <= 1.0:
            raise InputError(f"--strength is {strength}, expected a value in (0, 1] (1: from pure noise).")
        skip = (steps - min(int(steps * strength), steps)) * self.order
        if skip >= len(self.timesteps):
            raise InputError(f"--strength {strength} with {steps} steps runs no step (int({steps} x {strength}) = 0); "
                             "raise --strength or --steps.")
        first = (self.table if self._restart is None else self._restart)[skip]
        self.timesteps, self.levels = self.timesteps[skip:], self.levels[skip:]
        self.table = np.concatenate([first[None], self.table[skip + 1:]])
        self._restart, self._history = None, None

    def add_noise(self, x0: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """The sample the first call starts from, a x0 + b noise in float32 (diffusers' add_noise at that timestep)."""
        if not len(self.levels):
            raise InputError(f"--scheduler {self.name} does not start from a noised image; choose another.")
        a, b = (np.float32(v) for v in self.levels[0])
        return a * x0 + b * noise

    def _set(self, timesteps: Sequence[float] | np.ndarray, rows: list[tuple[float, ...]], init_noise_sigma: float = 1.0,
             levels: Sequence[tuple[float, float]] | np.ndarray = (), restart: list[tuple[float, ...]] | None = None
             ) -> None:
        """Fill the timesteps, the table, the starting noise scale, the noise levels (a, b) of each call and the rows
        a run starting at each call takes when they differ from the table's."""
        self.timesteps = np.asarray(timesteps, np.float64)
        self.table = np.asarray(rows, np.float64).astype(np.float32).reshape(-1, len(COLUMNS))
        self.init_noise_sigma = float(init_noise_sigma)
        self.levels = np.asarray(levels, np.float64).reshape(-1, 2)
        self._restart = None if restart is None else np.asarray(restart, np.float64).astype(np.float32)
        self._history = None


SCHEDULERS: dict[str, type[Scheduler]] = {}


def register_scheduler(cls: type[Scheduler]) -> type[Scheduler]:
    """Class decorator: make a scheduler available by its name."""
    SCHEDULERS[cls.name] = cls
    return cls


# diffusers scheduler classes deploykit does not reproduce, with why (README's scheduler table). A class in neither
# this table nor a Scheduler's diffusers_class is refused too, by name: a folder's sampler is never guessed.
NOT_REPRODUCED = {
    "PNDMScheduler": "PLMS combines the last four predictions (one history buffer holds one)",
    "LMSDiscreteScheduler": "linear multistep over the last four derivatives (one history buffer holds one)",
    "UniPCMultistepScheduler": "the UniPC predictor-corrector is not implemented",
    "DEISMultistepScheduler": "DEIS is not implemented",
    "DPMSolverSinglestepScheduler": "single-step DPM-Solver is not implemented (the multistep one is)",
    "KDPM2DiscreteScheduler": "DPM-Solver-2 (k-diffusion) is not implemented",
    "KDPM2AncestralDiscreteScheduler": "ancestral DPM-Solver-2 (k-diffusion) is not implemented",
    "DDIMInverseScheduler": "it inverts images to noise, it does not sample",
    "DPMSolverMultistepInverseScheduler": "it inverts images to noise, it does not sample",
    "EDMEulerScheduler": "EDM preconditioning (sigma_data, c_noise) is not the DDPM parametrization",
    "EDMDPMSolverMultistepScheduler": "EDM preconditioning (sigma_data, c_noise) is not the DDPM parametrization",
    "CMStochasticIterativeScheduler": "consistency-model sampling is not implemented",
    "TCDScheduler": "trajectory consistency distillation sampling is not implemented",
    "LCMScheduler": "latent consistency sampling is not implemented",
    "IPNDMScheduler": "improved PNDM combines the last four predictions (one history buffer holds one)",
    "DPMSolverSDEScheduler": "its noise comes from a Brownian tree (torchsde), not one draw per step",
    "CosineDPMSolverMultistepScheduler": "its noise comes from a Brownian tree (torchsde), not one draw per step",
    "FlowMatchEulerDiscreteScheduler": "flow matching (a velocity over sigma in [0, 1]) is not the DDPM parametrization",
    "FlowMatchHeunDiscreteScheduler": "flow matching (a velocity over sigma in [0, 1]) is not the DDPM parametrization",
    "ScoreSdeVeScheduler": "variance-exploding SDE sampling is not implemented",
    "KarrasVeScheduler": "variance-exploding (Karras) sampling is not implemented",
    "RePaintScheduler": "it inpaints (needs an image and a mask), it does not sample from noise alone",
    "VQDiffusionScheduler": "discrete (token) diffusion is not a Gaussian denoising loop",
    "AmusedScheduler": "masked-token generation is not a Gaussian denoising loop",
    "UnCLIPScheduler": "unCLIP's learned-range variance is not implemented",
    "DDPMParallelScheduler": "the parallel (batched-timestep) variant is not wired to deploykit's ddpm; save DDPMScheduler",
    "DDIMParallelScheduler": "the parallel (batched-timestep) variant is not wired to deploykit's ddim; save DDIMScheduler",
}


def for_diffusers_class(name: str | None) -> str:
    """The scheduler that reproduces diffusers' scheduler class `name` (ddpm when a config names no class);
    InputError naming the class, why not and the fix otherwise."""
    if name is None:
        return "ddpm"
    taken = {cls.diffusers_class: n for n, cls in SCHEDULERS.items() if cls.diffusers_class}
    if name in taken:
        return taken[name]
    why = NOT_REPRODUCED.get(name, "deploykit does not reproduce it")
    raise InputError(f"the scheduler config is a {name}: {why}. deploykit samples with {choices(taken.values())} "
                     f"(diffusers' {', '.join(taken)}); swap the pipeline's scheduler before export, e.g. "
                     "`pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)` then "
                     "`pipe.save_pretrained(DIR)`; the bundle offers every deploykit sampler.")


def check_steps(steps: int, most: int | None, what: str) -> None:
    """InputError unless 1 <= steps (<= most)."""
    if steps < 1:
        raise InputError(f"--steps is {steps}, expected at least 1 {what}.")
    if most is not None and steps > most:
        raise InputError(f"--steps is {steps}, but this model was trained with {most} diffusion steps; "
                         f"a loop can take at most {most} (fewer are strided).")


def make_scheduler(name: str, allowed: Sequence[str], schedule: Mapping[str, Any], **options: Any) -> Scheduler:
    """Scheduler `name` configured from a diffusion bundle's `schedule` plus `options` (eta, karras,
    clipped_model_output; None = the config's choice); InputError for a scheduler not in the bundle's
    `allowed` ones or an option it does not take."""
    if name not in allowed:
        raise InputError(f"--scheduler {name!r} does not fit this bundle; choose one of {choices(allowed)}.")
    cls = SCHEDULERS[name]
    given = {k: v for k, v in options.items() if v is not None}
    for key in given:
        if key not in cls.options:
            takers = [n for n in allowed if key in SCHEDULERS[n].options]
            fix = (f"add --scheduler {takers[0]}" if len(takers) == 1 else "pick one of them with --scheduler") if takers \
                else "drop it"
            raise InputError(f"{OPTION_FLAGS[key]} is an option of {', '.join(takers) or 'no scheduler of this bundle'}; "
                             f"{fix} (this run uses {name}).")
    return cls({**schedule, **{OPTION_KEYS[k]: v for k, v in given.items()}})


from . import ddim, ddpm, dpm_solver, langevin, sigmas  # noqa: E402,F401  (each registers its schedulers)
