"""Energy-model loops (numpy only): RBM Gibbs chains from injected noise, Hopfield retrieval to a fixed point."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backends.base import Runner
from ..checks import check_count
from ..errors import InputError
from .kinds import IMAGES, ImageLayout, LoopKind, Runners, SampleOptions, register


@dataclass(frozen=True, kw_only=True)
class GibbsConfig(ImageLayout):
    """An RBM's `gibbs` graph: k Gibbs steps over injected noise; visible units 'bernoulli' or 'gaussian'."""

    kind = "gibbs"
    visible: int
    hidden: int
    visible_type: str


@dataclass(frozen=True, kw_only=True)
class HopfieldConfig(ImageLayout):
    """A Hopfield network's `update` graph: one synchronous update of +-1 states and their energy."""

    kind = "hopfield"
    units: int
    max_iterations: int


@dataclass(frozen=True)
class GibbsOptions(SampleOptions):
    """Chain length (default GIBBS_STEPS) and host=True for one graph call per step."""

    steps: int | None = None
    host: bool = False

GIBBS_STEPS = 1000  # default chain length of `sample`


def gibbs_noise(loop: GibbsConfig, n: int, steps: int, seed: int) -> dict[str, np.ndarray]:
    """The chain's start v (uniform in [0, 1)) and injected noise for `steps` steps, all from `seed`."""
    rng = np.random.default_rng(seed)
    visible, hidden = loop.visible, loop.hidden
    v = rng.random((n, visible), dtype=np.float32)
    hidden_uniforms = rng.random((steps, n, hidden), dtype=np.float32)
    shape = (steps, n, visible)
    gaussian = loop.visible_type == "gaussian"
    noise = rng.standard_normal(shape, dtype=np.float32) if gaussian else rng.random(shape, dtype=np.float32)
    return {"v": v, "hidden_uniforms": hidden_uniforms, "visible_noise": noise}


def gibbs_chain(runner: Runner, loop: GibbsConfig, n: int, steps: int, seed: int, per_call: int | None = None
                ) -> dict[str, np.ndarray]:
    """`steps` Gibbs steps for `n` chains: {v_last, h_last, visible_mean} after the last step. per_call=None runs all
    steps in one graph call; per_call=1 is the host loop (one call per step), carrying v between calls."""
    check_count(n)
    if steps < 1:
        raise InputError(f"--steps is {steps}, expected at least 1 Gibbs step.")
    feeds = gibbs_noise(loop, n, steps, seed)
    v, chunk = feeds["v"], per_call or steps
    for start in range(0, steps, chunk):
        part = slice(start, start + chunk)
        out = runner.infer({"v": v, "hidden_uniforms": feeds["hidden_uniforms"][part], "visible_noise": feeds["visible_noise"][part]})
        v = out["v_last"]
    return out


def sample_rbm(runner: Runner, loop: GibbsConfig, n: int, seed: int, steps: int | None = None,
               per_call: int | None = None) -> np.ndarray:
    """E[v | h] after `steps` Gibbs steps (default GIBBS_STEPS): pixel probabilities or Gaussian means [n, visible]."""
    return gibbs_chain(runner, loop, n, GIBBS_STEPS if steps is None else steps, seed, per_call)["visible_mean"]


@dataclass(frozen=True)
class Retrieval:
    """Where each state ended, after how many updates, whether it is a fixed point, and its energy."""

    states: np.ndarray
    iterations: np.ndarray
    converged: np.ndarray
    energy: np.ndarray


def retrieve(runner: Runner, loop: HopfieldConfig, states: np.ndarray, max_iterations: int | None = None) -> Retrieval:
    """Synchronous updates until every state is a fixed point or max_iterations (default: the bundle's) pass.
    States that reached their fixed point stop counting iterations; the others are reported unconverged."""
    units = loop.units
    s = np.asarray(states, np.float32).reshape(len(states), -1)
    if s.shape[1] != units or not np.isin(s, (-1.0, 1.0)).all():
        raise InputError(f"states must be [batch, {units}] of -1/+1 values; got {list(s.shape)}"
                         f"{'' if np.isin(s, (-1.0, 1.0)).all() else ' with other values'}.")
    limit = loop.max_iterations if max_iterations is None else max_iterations
    iterations = np.zeros(len(s), np.int64)
    for _ in range(limit):
        out = runner.infer({"state": s})
        changed = (out["next"] != s).any(1)
        if not changed.any():
            return Retrieval(s, iterations, ~changed, out["energy"])
        iterations += changed
        s = out["next"]
    out = runner.infer({"state": s})
    return Retrieval(s, iterations, (out["next"] == s).all(1), out["energy"])


def random_states(loop: HopfieldConfig, n: int, seed: int) -> np.ndarray:
    """`n` random +-1 states from `seed`."""
    check_count(n)
    return np.where(np.random.default_rng(seed).random((n, loop.units)) < 0.5, -1.0, 1.0).astype(np.float32)


def check_gibbs(runners: Runners, loop: GibbsConfig, seed: int) -> dict[str, np.ndarray]:
    """A 25-step chain of four samples, in one graph call and one call per step."""
    graph, host = (gibbs_chain(runners["gibbs"], loop, 4, 25, seed, per_call) for per_call in (None, 1))
    return {f"{k}.graph": v for k, v in graph.items()} | {f"{k}.host": v for k, v in host.items()}


def check_hopfield(runners: Runners, loop: HopfieldConfig, seed: int) -> dict[str, np.ndarray]:
    """Retrieval from eight random states: final states, update counts, energies."""
    found = retrieve(runners["update"], loop, random_states(loop, 8, seed))
    return {"states": found.states, "iterations": found.iterations, "energy": found.energy}


register(LoopKind(
    GibbsConfig, "RBM", "sample", GibbsOptions,
    sample=lambda runners, loop, n, seed, o: sample_rbm(runners["gibbs"], loop, n, seed, o.steps, 1 if o.host else None),
    check=check_gibbs, writer=IMAGES,
))
register(LoopKind(
    HopfieldConfig, "Hopfield", "sample", SampleOptions,
    sample=lambda runners, loop, n, seed, o: retrieve(runners["update"], loop, random_states(loop, n, seed)).states,
    check=check_hopfield, writer=IMAGES,
))
