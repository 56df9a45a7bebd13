"""Masked autoregressive bundles at run time (numpy only): sampling loops, log-likelihood, AR checks.

Loops draw every uniform (or normal) up front from numpy's PCG64 seeded with `seed`, one per
dimension and sample, so the same loop over torch and over onnxruntime gives the same samples.
The four kinds (dimensionwise FVSBN/MADE, NADE, raster PixelCNN, WaveNet) share one config base
whose methods say how their conditionals graphs read inputs and lay out outputs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..backends.base import Runner
from ..checks import check_count
from ..errors import InputError
from .generator import LabelOptions, cycle_labels
from .kinds import IMAGES, ImageLayout, LoopKind, Runners, SampleOptions, Writer, register
from .tokens import SamplingConfig, pick_tokens

CATEGORICAL = SamplingConfig(temperature=1.0)
BATCH = 256  # rows per graph call when scoring


@dataclass(frozen=True, kw_only=True)
class MaskedConfig(ImageLayout):
    """Shared by the masked autoregressive kinds: conditionals graphs p(x_i | x_<i) named by `roles`.

    The default methods serve the binary vector kinds (FVSBN/MADE and NADE, whose configs carry
    `orderings` and `num_inputs`); PixelCNN and WaveNet override them.
    """

    roles: list[str]
    num_classes: int = 0
    input_name = "x"  # the conditionals graphs' data input

    def conditionals_roles(self) -> list[str]:
        """The roles holding p(x_i | x_<i): one per ordering for an ensemble, else just `conditionals`."""
        return ["conditionals"]

    def probe(self, rng: np.random.Generator, length: int, ordering: int) -> tuple[np.ndarray, np.ndarray]:
        """(one random input [1, ...], rank [D]: each flat dimension's position in the sampling order)."""
        base = rng.integers(0, 2, (1, self.num_inputs)).astype(np.float32)
        return base, np.argsort(self.orderings[ordering])

    def perturb(self, value: np.ndarray) -> np.ndarray:
        """Another valid value of one dimension."""
        return 1 - value

    def per_dimension(self, out: Mapping[str, np.ndarray]) -> np.ndarray:
        """Graph outputs of one example as [D, values] in the input's flat dimension order."""
        return np.stack([v[0] for k, v in out.items() if k != "log_prob"], -1)


@dataclass(frozen=True, kw_only=True)
class DimensionwiseConfig(MaskedConfig):
    """FVSBN / MADE: one conditionals graph per ordering (mask set); bernoulli or gaussian dimensions."""

    kind = "dimensionwise"
    orderings: list[list[int]]
    distribution: str
    num_inputs: int

    def conditionals_roles(self) -> list[str]:
        """One conditionals graph per ordering."""
        return list(self.roles)


@dataclass(frozen=True, kw_only=True)
class NadeConfig(MaskedConfig):
    """NADE: a conditionals graph and the O(H)-per-dimension `step` graph."""

    kind = "nade"
    orderings: list[list[int]]
    distribution: str
    num_inputs: int
    hidden: int


@dataclass(frozen=True, kw_only=True)
class RasterConfig(MaskedConfig):
    """PixelCNN: categorical pixels of `input_shape` [C, H, W] with `levels` values, raster order, R->G->B."""

    kind = "raster"
    input_shape: list[int]
    levels: int
    input_name = "image"

    def probe(self, rng: np.random.Generator, length: int, ordering: int) -> tuple[np.ndarray, np.ndarray]:
        """A random image; rank: raster order, channels inside a pixel."""
        c, h, w = self.input_shape
        rank = np.arange(c * h * w).reshape(h, w, c).transpose(2, 0, 1).reshape(-1)
        return rng.integers(0, self.levels, (1, c, h, w)), rank

    def perturb(self, value: np.ndarray) -> np.ndarray:
        """The next level."""
        return (value + 1) % self.levels

    def per_dimension(self, out: Mapping[str, np.ndarray]) -> np.ndarray:
        """Logits [1, L, C, H, W] as [C*H*W, L]."""
        return np.moveaxis(out["logits"][0], 0, -1).reshape(-1, self.levels)


@dataclass(frozen=True, kw_only=True)
class WavenetConfig(MaskedConfig):
    """WaveNet: mu-law codes with `levels` values; `step` carries one queue [channels, dilation] per layer."""

    kind = "wavenet"
    levels: int
    start: int
    receptive_field: int
    queues: list[list[int]]
    sample_rate: int
    input_name = "audio"

    def probe(self, rng: np.random.Generator, length: int, ordering: int) -> tuple[np.ndarray, np.ndarray]:
        """A random clip of `length` codes; rank: time."""
        return rng.integers(0, self.levels, (1, length)), np.arange(length)

    def perturb(self, value: np.ndarray) -> np.ndarray:
        """Half the code range away."""
        return (value + self.levels // 2) % self.levels

    def per_dimension(self, out: Mapping[str, np.ndarray]) -> np.ndarray:
        """Logits [1, L, T] as [T, L]."""
        return out["logits"][0].T


@dataclass(frozen=True)
class DimensionwiseOptions(SampleOptions):
    """Which ordering (mask set) of a MADE ensemble samples."""

    ordering: int = 0


@dataclass(frozen=True)
class WavenetOptions(SampleOptions):
    """Labels (default: cycle), length in samples (default one second), fast generation or naive."""

    labels: np.ndarray | None = None
    steps: int | None = None
    fast: bool = True


def _bernoulli(logit: np.ndarray, u: np.ndarray) -> np.ndarray:
    """1 where u < sigmoid(logit), computed in float64."""
    return (u < 1.0 / (1.0 + np.exp(-logit.astype(np.float64)))).astype(np.float32)


def _label_feeds(loop: MaskedConfig, n: int, labels: np.ndarray | None) -> dict[str, np.ndarray]:
    labels = cycle_labels(n, loop.num_classes or None, labels)
    return {} if labels is None else {"label": labels}


def mask_role(loop: DimensionwiseConfig, ordering: int) -> str:
    """The conditionals role of ordering (mask set) `ordering`, or InputError naming the valid ones."""
    roles = loop.roles
    if not 0 <= ordering < len(roles):
        raise InputError(f"--ordering {ordering}: this bundle has ordering(s) 0..{len(roles) - 1}.")
    return roles[ordering]


def sample_dimensionwise(runners: Runners, loop: DimensionwiseConfig, n: int, seed: int, ordering: int = 0) -> np.ndarray:
    """[n, D] samples, one full conditionals pass per dimension in the ordering (FVSBN, MADE)."""
    check_count(n)
    runner = runners[mask_role(loop, ordering)]
    order, size = loop.orderings[ordering], loop.num_inputs
    rng = np.random.default_rng(seed)
    gaussian = loop.distribution == "gaussian"
    noise = rng.standard_normal((n, size)) if gaussian else rng.random((n, size))
    x = np.zeros((n, size), np.float32)
    for step, i in enumerate(order):
        out = runner.infer({"x": x}, checked=step > 0)
        if gaussian:
            x[:, i] = out["mu"][:, i] + np.exp(out["log_std"][:, i]) * noise[:, i]
        else:
            x[:, i] = _bernoulli(out["logits"][:, i], noise[:, i])
    return x


def sample_nade(runners: Runners, loop: NadeConfig, n: int, seed: int) -> np.ndarray:
    """[n, D] NADE samples by the O(H)-per-dimension recursion over the `step` graph."""
    check_count(n)
    step, order = runners["step"], loop.orderings[0]
    u = np.random.default_rng(seed).random((n, loop.num_inputs))
    x = np.zeros((n, len(order)), np.float32)
    feeds = {"total": np.zeros((n, loop.hidden), np.float32), "x_prev": np.zeros(n, np.float32)}
    for pos, i in enumerate(order):
        out = step.infer(feeds | {"index": np.array([pos], np.int64)}, checked=pos > 0)
        x[:, i] = _bernoulli(out["logit"], u[:, i])
        feeds = {"total": out["next_total"], "x_prev": x[:, i]}
    return x


def sample_raster(
    runners: Runners, loop: RasterConfig, n: int, seed: int, labels: np.ndarray | None = None
) -> np.ndarray:
    """[n, C, H, W] integer images, pixel by pixel in raster order, R then G then B inside a pixel."""
    check_count(n)
    runner = runners["conditionals"]
    c, h, w = loop.input_shape
    u = np.random.default_rng(seed).random((n, c, h, w))
    image = np.zeros((n, c, h, w), np.int64)
    feeds = {"image": image} | _label_feeds(loop, n, labels)
    first = True
    for r in range(h):
        for q in range(w):
            for ch in range(c):
                logits = runner.infer(feeds, checked=not first)["logits"]
                image[:, ch, r, q] = pick_tokens(logits[:, :, ch, r, q], u[:, ch, r, q], CATEGORICAL)
                first = False
    return image


def _check_length(length: int) -> None:
    if length < 1:
        raise InputError(f"--steps is {length}, expected at least 1 audio sample.")


def sample_wavenet(
    runners: Runners,
    loop: WavenetConfig,
    n: int,
    length: int,
    seed: int,
    labels: np.ndarray | None = None,
    fast: bool = True,
) -> np.ndarray:
    """[n, length] mu-law codes: fast generation over the `step` graph's layer queues, or naive.

    Naive generation re-runs the `conditionals` graph over the last receptive field (plus a
    placeholder for the sample being drawn) for every sample; both draw from the same uniforms.
    """
    check_count(n)
    _check_length(length)
    u = np.random.default_rng(seed).random((n, length))
    codes = np.zeros((n, length), np.int64)
    cond = _label_feeds(loop, n, labels)
    if fast:
        step, layers = runners["step"], range(len(loop.queues))
        feeds = {"sample": np.full(n, loop.start, np.int64)} | cond
        feeds |= {f"past_queue.{i}": np.zeros((n, c, d), np.float32) for i, (c, d) in enumerate(loop.queues)}
        queues = [(f"past_queue.{i}", f"present_queue.{i}") for i in layers]
        for t in range(length):
            out = step.infer(feeds, checked=t > 0)
            feeds["sample"] = pick_tokens(out["logits"], u[:, t], CATEGORICAL)
            codes[:, t] = feeds["sample"]
            for past, present in queues:
                feeds[past] = out[present]
        return codes
    runner, field = runners["conditionals"], loop.receptive_field
    for t in range(length):
        window = np.ascontiguousarray(codes[:, max(0, t - field) : t + 1])  # codes[:, t] is a placeholder it cannot see
        logits = runner.infer({"audio": window} | cond, checked=t > 0)["logits"][:, :, -1]
        codes[:, t] = pick_tokens(logits, u[:, t], CATEGORICAL)
    return codes


def mu_law_decode(codes: np.ndarray, levels: int) -> np.ndarray:
    """Integer codes 0..levels-1 -> float32 samples in [-1, 1] (inverse mu-law)."""
    mu = levels - 1
    y = codes.astype(np.float64) / mu * 2 - 1
    return (np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu).astype(np.float32)


def write_wav(path: str | os.PathLike[str], audio: np.ndarray, sample_rate: int) -> None:
    """Write [n, T] samples in [-1, 1] as one 16-bit mono WAV, clips one after another with 0.1 s silence."""
    import wave

    gap = np.zeros(sample_rate // 10, np.float32)
    clip = np.concatenate([np.concatenate([a, gap]) for a in audio])
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes((np.clip(clip, -1, 1) * 32767).astype("<i2").tobytes())


def log_prob(
    runners: Runners, loop: MaskedConfig, x: np.ndarray, labels: np.ndarray | None = None
) -> np.ndarray:
    """log p(x) per example in nats; an order-agnostic ensemble averages p(x) over its orderings."""
    if loop.num_classes and labels is None:
        raise InputError(f"this model is class-conditional ({loop.num_classes} classes): pass one label per example.")
    extra = _label_feeds(loop, len(x), labels)
    name = loop.input_name
    per_role = []
    for role in loop.conditionals_roles():
        parts = [
            runners[role].infer({name: x[i : i + BATCH]} | {k: v[i : i + BATCH] for k, v in extra.items()})["log_prob"]
            for i in range(0, len(x), BATCH)
        ]
        per_role.append(np.concatenate(parts).astype(np.float64))
    stacked = np.stack(per_role)
    top = stacked.max(0)
    return top + np.log(np.exp(stacked - top).mean(0))


def dependencies(
    runner: Runner, loop: MaskedConfig, seed: int = 0, length: int = 64, ordering: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(changed [D_in, D_out] bool, rank [D]) for one example: which outputs move when each input does.

    Each input dimension is perturbed in its own batch-1 call, so equal outputs are bit-equal.
    rank[i] is dimension i's position in the sampling order (raster, then R->G->B; time; `ordering`).
    """
    rng = np.random.default_rng(seed)
    base, rank = loop.probe(rng, length, ordering)
    extra = {"label": np.zeros(1, np.int64)} if loop.num_classes else {}
    name = loop.input_name
    reference = loop.per_dimension(runner.infer({name: base} | extra))
    changed = np.zeros((base.size, base.size), bool)
    for j in range(base.size):
        x = base.copy()
        x.flat[j] = loop.perturb(x.flat[j])
        changed[j] = (loop.per_dimension(runner.infer({name: x} | extra)) != reference).any(-1)
    return changed, rank


def autoregressive_violations(runner: Runner, loop: MaskedConfig, ordering: int = 0) -> list[tuple[int, int]]:
    """(input j, output i) pairs where perturbing x_j changed the conditional of an x_i not after it."""
    changed, rank = dependencies(runner, loop, ordering=ordering)
    j, i = np.nonzero(changed & (rank[None, :] <= rank[:, None]))
    return list(zip(j.tolist(), i.tolist()))


def masked_problems(runners: Runners, loop: MaskedConfig) -> list[str]:
    """Conditionals graphs whose outputs see later inputs."""
    problems = []
    for k, role in enumerate(loop.conditionals_roles()):
        bad = autoregressive_violations(runners[role], loop, k)
        if bad:
            problems.append(f"'{role}' is not autoregressive: output(s) change when a later input does, e.g. (input, output) {bad[:3]}")
    return problems


def check_dimensionwise(runners: Runners, loop: DimensionwiseConfig, seed: int) -> dict[str, np.ndarray]:
    """Four samples per ordering (FVSBN, MADE), one conditionals pass per dimension."""
    return {f"x.{k}": sample_dimensionwise(runners, loop, 4, seed, k) for k in range(len(loop.roles))}


def check_nade(runners: Runners, loop: NadeConfig, seed: int) -> dict[str, np.ndarray]:
    """Four samples by NADE's step recursion."""
    return {"x": sample_nade(runners, loop, 4, seed)}


def check_raster(runners: Runners, loop: RasterConfig, seed: int) -> dict[str, np.ndarray]:
    """Four images in raster order (labels cycling for class-conditional models)."""
    return {"images": sample_raster(runners, loop, 4, seed)}


def check_wavenet(runners: Runners, loop: WavenetConfig, seed: int) -> dict[str, np.ndarray]:
    """Fast generation of two clips past one receptive field, and a short naive run."""
    length = loop.receptive_field + 44
    return {"fast": sample_wavenet(runners, loop, 2, length, seed), "naive": sample_wavenet(runners, loop, 1, 40, seed, fast=False)}


def write_audio(out: Path, codes: np.ndarray, loop: WavenetConfig, runners: Runners) -> None:
    """Mu-law codes as one .wav, clips one after another."""
    write_wav(out, mu_law_decode(codes, loop.levels), loop.sample_rate)


def _softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    p = np.exp(x - x.max())
    return p / p.sum()


def _two_levels(logit: np.ndarray) -> np.ndarray:
    """[p(0), p(1)] of a Bernoulli logit, in float64."""
    one = 1.0 / (1.0 + np.exp(-float(logit)))
    return np.array([1.0 - one, one])


class _Symbols:
    """One example's values coded dimension by dimension in the sampling order, batch 1, the same graph calls when
    encoding and decoding (runtimes.compress.SymbolModel); subclasses say how a call reads and writes."""

    levels: int
    classes: int = 0

    def __init__(self, runners: Runners, loop: MaskedConfig) -> None:
        self.runners, self.loop, self.classes = runners, loop, loop.num_classes
        self.k, self.positions = 0, np.empty(0, np.int64)
        self.label: dict[str, np.ndarray] = {}

    def order(self, shape: tuple[int, ...]) -> np.ndarray:
        """Flat indices of an example of `shape` in coding order."""
        raise NotImplementedError

    def check(self, shape: tuple[int, ...]) -> str | None:
        """What is wrong with an example shape, or None."""
        raise NotImplementedError

    def begin(self, shape: tuple[int, ...], label: int | None) -> None:
        """Start an example (label: its class for a class-conditional model)."""
        self.k, self.positions = 0, self.order(shape)
        self.label = {} if label is None else {"label": np.array([label], np.int64)}
        self._start(shape)

    def _start(self, shape: tuple[int, ...]) -> None: ...


class RasterSymbols(_Symbols):
    """PixelCNN: pixels in raster order, channels inside a pixel, `levels` values each."""

    def __init__(self, runners: Runners, loop: RasterConfig) -> None:
        super().__init__(runners, loop)
        self.levels, self.shape = loop.levels, tuple(loop.input_shape)

    def check(self, shape: tuple[int, ...]) -> str | None:
        return None if shape == self.shape else f"images of shape {list(self.shape)} (C, H, W)"

    def order(self, shape: tuple[int, ...]) -> np.ndarray:
        c, h, w = shape
        return np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).reshape(-1)

    def _start(self, shape: tuple[int, ...]) -> None:
        self.image = np.zeros((1, *shape), np.int64)

    def probabilities(self) -> np.ndarray:
        logits = self.runners["conditionals"].infer({"image": self.image} | self.label, checked=self.k > 0)["logits"]
        return _softmax(logits.reshape(1, self.levels, -1)[0, :, self.positions[self.k]])

    def push(self, symbol: int) -> None:
        self.image.flat[self.positions[self.k]] = symbol
        self.k += 1


class BinarySymbols(_Symbols):
    """FVSBN / MADE (bernoulli, ordering 0 of an ensemble) and NADE (its O(H) step graph): 0/1 per dimension."""

    levels = 2

    def check(self, shape: tuple[int, ...]) -> str | None:
        if getattr(self.loop, "distribution", "bernoulli") != "bernoulli":
            return "binary data, but this model's dimensions are gaussian (continuous values have no lossless code)"
        return None if shape == (self.loop.num_inputs,) else f"binary vectors of {self.loop.num_inputs} dimensions"

    def order(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.asarray(self.loop.orderings[0], np.int64)

    def _start(self, shape: tuple[int, ...]) -> None:
        self.x = np.zeros((1, *shape), np.float32)
        self.feeds = {"total": np.zeros((1, getattr(self.loop, "hidden", 0)), np.float32), "x_prev": np.zeros(1, np.float32)}

    def probabilities(self) -> np.ndarray:
        if isinstance(self.loop, NadeConfig):
            self.out = self.runners["step"].infer(self.feeds | {"index": np.array([self.k], np.int64)}, checked=self.k > 0)
            return _two_levels(self.out["logit"][0])
        logits = self.runners[mask_role(self.loop, 0)].infer({"x": self.x}, checked=self.k > 0)["logits"]
        return _two_levels(logits[0, self.positions[self.k]])

    def push(self, symbol: int) -> None:
        self.x[0, self.positions[self.k]] = symbol
        if isinstance(self.loop, NadeConfig):
            self.feeds = {"total": self.out["next_total"], "x_prev": np.array([symbol], np.float32)}
        self.k += 1


class WavenetSymbols(_Symbols):
    """WaveNet: mu-law codes in time order, by fast generation's step graph and its layer queues."""

    def __init__(self, runners: Runners, loop: WavenetConfig) -> None:
        super().__init__(runners, loop)
        self.levels = loop.levels

    def check(self, shape: tuple[int, ...]) -> str | None:
        return None if len(shape) == 1 else "clips of mu-law codes [length]"

    def order(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.arange(shape[0])

    def _start(self, shape: tuple[int, ...]) -> None:
        loop = self.loop
        self.feeds = {"sample": np.full(1, loop.start, np.int64)} | self.label
        self.feeds |= {f"past_queue.{i}": np.zeros((1, c, d), np.float32) for i, (c, d) in enumerate(loop.queues)}

    def probabilities(self) -> np.ndarray:
        self.out = self.runners["step"].infer(self.feeds, checked=self.k > 0)
        return _softmax(self.out["logits"][0])

    def push(self, symbol: int) -> None:
        self.feeds["sample"] = np.array([symbol], np.int64)
        for i in range(len(self.loop.queues)):
            self.feeds[f"past_queue.{i}"] = self.out[f"present_queue.{i}"]
        self.k += 1


def _density(runners: Runners, loop: MaskedConfig, x: np.ndarray, labels: np.ndarray | None, host: bool) -> np.ndarray:
    if host:
        raise InputError("host=True is for flow bundles (IAF density on the host).")
    return log_prob(runners, loop, x, labels)


register(LoopKind(
    DimensionwiseConfig, "FVSBN/MADE", "sample", DimensionwiseOptions,
    sample=lambda runners, loop, n, seed, o: sample_dimensionwise(runners, loop, n, seed, o.ordering),
    check=check_dimensionwise, structure=masked_problems, writer=IMAGES, log_prob=_density, symbols=BinarySymbols,
))
register(LoopKind(
    NadeConfig, "NADE", "sample", SampleOptions,
    sample=lambda runners, loop, n, seed, o: sample_nade(runners, loop, n, seed),
    check=check_nade, structure=masked_problems, writer=IMAGES, log_prob=_density, symbols=BinarySymbols,
))
register(LoopKind(
    RasterConfig, "PixelCNN", "sample", LabelOptions,
    sample=lambda runners, loop, n, seed, o: sample_raster(runners, loop, n, seed, o.labels),
    check=check_raster, structure=masked_problems, writer=IMAGES, log_prob=_density, symbols=RasterSymbols,
))
register(LoopKind(
    WavenetConfig, "WaveNet", "sample", WavenetOptions,
    sample=lambda runners, loop, n, seed, o: sample_wavenet(
        runners, loop, n, loop.sample_rate if o.steps is None else o.steps, seed, o.labels, o.fast),
    check=check_wavenet, structure=masked_problems, log_prob=_density, quick={"steps": 400}, symbols=WavenetSymbols,
    writer=Writer((".wav", ".npy"), "WaveNet writes audio as .wav (or its mu-law codes as .npy).", write_audio),
))
