"""Masked autoregressive bundles at run time (numpy only): sampling loops, log-likelihood, AR checks.

Loops draw every uniform (or normal) up front from numpy's PCG64 seeded with `seed`, one per
dimension and sample, so the same loop over torch and over onnxruntime gives the same samples.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import InputError
from .base import Runner
from .generator import check_count, cycle_labels
from .tokens import SamplingConfig, pick_tokens

MASKED_KINDS = ("dimensionwise", "nade", "raster", "wavenet")  # loop kinds of masked autoregressive bundles
CATEGORICAL = SamplingConfig(temperature=1.0)
BATCH = 256  # rows per graph call when scoring


def _bernoulli(logit: np.ndarray, u: np.ndarray) -> np.ndarray:
    """1 where u < sigmoid(logit), computed in float64."""
    return (u < 1.0 / (1.0 + np.exp(-logit.astype(np.float64)))).astype(np.float32)


def _label_feeds(loop: Mapping[str, Any], n: int, labels: np.ndarray | None) -> dict[str, np.ndarray]:
    labels = cycle_labels(n, int(loop.get("num_classes", 0)) or None, labels)
    return {} if labels is None else {"label": labels}


def conditionals_roles(loop: Mapping[str, Any]) -> list[str]:
    """The roles holding p(x_i | x_<i): one per ordering for an ensemble, else just `conditionals`."""
    return list(loop["roles"]) if loop["kind"] == "dimensionwise" else ["conditionals"]


def mask_role(loop: Mapping[str, Any], ordering: int) -> str:
    """The conditionals role of ordering (mask set) `ordering`, or InputError naming the valid ones."""
    roles = loop["roles"]
    if not 0 <= ordering < len(roles):
        raise InputError(f"--ordering {ordering}: this bundle has ordering(s) 0..{len(roles) - 1}.")
    return roles[ordering]


def sample_dimensionwise(runners: Mapping[str, Runner], loop: Mapping[str, Any], n: int, seed: int, ordering: int = 0) -> np.ndarray:
    """[n, D] samples, one full conditionals pass per dimension in the ordering (FVSBN, MADE)."""
    check_count(n)
    runner = runners[mask_role(loop, ordering)]
    order, size = loop["orderings"][ordering], int(loop["num_inputs"])
    rng = np.random.default_rng(seed)
    gaussian = loop["distribution"] == "gaussian"
    noise = rng.standard_normal((n, size)) if gaussian else rng.random((n, size))
    x = np.zeros((n, size), np.float32)
    for step, i in enumerate(order):
        out = runner.infer({"x": x}, checked=step > 0)
        if gaussian:
            x[:, i] = out["mu"][:, i] + np.exp(out["log_std"][:, i]) * noise[:, i]
        else:
            x[:, i] = _bernoulli(out["logits"][:, i], noise[:, i])
    return x


def sample_nade(runners: Mapping[str, Runner], loop: Mapping[str, Any], n: int, seed: int) -> np.ndarray:
    """[n, D] NADE samples by the O(H)-per-dimension recursion over the `step` graph."""
    check_count(n)
    step, order = runners["step"], loop["orderings"][0]
    u = np.random.default_rng(seed).random((n, int(loop["num_inputs"])))
    x = np.zeros((n, len(order)), np.float32)
    feeds = {"total": np.zeros((n, int(loop["hidden"])), np.float32), "x_prev": np.zeros(n, np.float32)}
    for pos, i in enumerate(order):
        out = step.infer(feeds | {"index": np.array([pos], np.int64)}, checked=pos > 0)
        x[:, i] = _bernoulli(out["logit"], u[:, i])
        feeds = {"total": out["next_total"], "x_prev": x[:, i]}
    return x


def sample_raster(
    runners: Mapping[str, Runner], loop: Mapping[str, Any], n: int, seed: int, labels: np.ndarray | None = None
) -> np.ndarray:
    """[n, C, H, W] integer images, pixel by pixel in raster order, R then G then B inside a pixel."""
    check_count(n)
    runner = runners["conditionals"]
    c, h, w = loop["input_shape"]
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
    runners: Mapping[str, Runner],
    loop: Mapping[str, Any],
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
        step, layers = runners["step"], range(len(loop["queues"]))
        feeds = {"sample": np.full(n, int(loop["start"]), np.int64)} | cond
        feeds |= {f"past_queue.{i}": np.zeros((n, c, d), np.float32) for i, (c, d) in enumerate(loop["queues"])}
        queues = [(f"past_queue.{i}", f"present_queue.{i}") for i in layers]
        for t in range(length):
            out = step.infer(feeds, checked=t > 0)
            feeds["sample"] = pick_tokens(out["logits"], u[:, t], CATEGORICAL)
            codes[:, t] = feeds["sample"]
            for past, present in queues:
                feeds[past] = out[present]
        return codes
    runner, field = runners["conditionals"], int(loop["receptive_field"])
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


def _input_name(loop: Mapping[str, Any]) -> str:
    return {"raster": "image", "wavenet": "audio"}.get(loop["kind"], "x")


def log_prob(
    runners: Mapping[str, Runner], loop: Mapping[str, Any], x: np.ndarray, labels: np.ndarray | None = None
) -> np.ndarray:
    """log p(x) per example in nats; an order-agnostic ensemble averages p(x) over its orderings."""
    if loop.get("num_classes") and labels is None:
        raise InputError(f"this model is class-conditional ({loop['num_classes']} classes): pass one label per example.")
    extra = _label_feeds(loop, len(x), labels)
    name = _input_name(loop)
    per_role = []
    for role in conditionals_roles(loop):
        parts = [
            runners[role].infer({name: x[i : i + BATCH]} | {k: v[i : i + BATCH] for k, v in extra.items()})["log_prob"]
            for i in range(0, len(x), BATCH)
        ]
        per_role.append(np.concatenate(parts).astype(np.float64))
    stacked = np.stack(per_role)
    top = stacked.max(0)
    return top + np.log(np.exp(stacked - top).mean(0))


def _perturb(loop: Mapping[str, Any], value: np.ndarray) -> np.ndarray:
    if loop["kind"] == "raster":
        return (value + 1) % int(loop["levels"])
    if loop["kind"] == "wavenet":
        return (value + int(loop["levels"]) // 2) % int(loop["levels"])
    return 1 - value


def _per_dimension(loop: Mapping[str, Any], out: Mapping[str, np.ndarray]) -> np.ndarray:
    """Graph outputs of one example as [D, values] in the input's flat dimension order."""
    if loop["kind"] == "raster":
        return np.moveaxis(out["logits"][0], 0, -1).reshape(-1, int(loop["levels"]))
    if loop["kind"] == "wavenet":
        return out["logits"][0].T
    return np.stack([v[0] for k, v in out.items() if k != "log_prob"], -1)


def dependencies(
    runner: Runner, loop: Mapping[str, Any], seed: int = 0, length: int = 64, ordering: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(changed [D_in, D_out] bool, rank [D]) for one example: which outputs move when each input does.

    Each input dimension is perturbed in its own batch-1 call, so equal outputs are bit-equal.
    rank[i] is dimension i's position in the sampling order (raster, then R->G->B; time; `ordering`).
    """
    rng = np.random.default_rng(seed)
    kind = loop["kind"]
    if kind == "raster":
        c, h, w = loop["input_shape"]
        base = rng.integers(0, int(loop["levels"]), (1, c, h, w))
        rank = np.arange(c * h * w).reshape(h, w, c).transpose(2, 0, 1).reshape(-1)
    elif kind == "wavenet":
        base = rng.integers(0, int(loop["levels"]), (1, length))
        rank = np.arange(length)
    else:
        base = rng.integers(0, 2, (1, int(loop["num_inputs"]))).astype(np.float32)
        rank = np.argsort(loop["orderings"][ordering])
    extra = {"label": np.zeros(1, np.int64)} if loop.get("num_classes") else {}
    name = _input_name(loop)
    reference = _per_dimension(loop, runner.infer({name: base} | extra))
    changed = np.zeros((base.size, base.size), bool)
    for j in range(base.size):
        x = base.copy()
        x.flat[j] = _perturb(loop, x.flat[j])
        changed[j] = (_per_dimension(loop, runner.infer({name: x} | extra)) != reference).any(-1)
    return changed, rank


def autoregressive_violations(runner: Runner, loop: Mapping[str, Any], ordering: int = 0) -> list[tuple[int, int]]:
    """(input j, output i) pairs where perturbing x_j changed the conditional of an x_i not after it."""
    changed, rank = dependencies(runner, loop, ordering=ordering)
    j, i = np.nonzero(changed & (rank[None, :] <= rank[:, None]))
    return list(zip(j.tolist(), i.tolist()))
