"""VAE loops over an encoder and a decoder graph (numpy only): sampling, latent interpolation and the
IWAE estimate of log p(x), all with seeded noise drawn here and passed into the graphs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..backends.base import Runner
from ..checks import check_count
from ..errors import InputError
from ..nn.density import HALF_LOG_2PI
from .generator import LabelOptions, cycle_labels, draw_latents
from .kinds import IMAGES, ImageLayout, LoopKind, Runners, register


@dataclass(frozen=True, kw_only=True)
class VaeConfig(ImageLayout):
    """`encoder` (x, noise[, label]) -> mu, logvar, z and `decoder` (z[, label]) -> Bernoulli logits over input_dim."""

    kind = "vae"
    latent_dim: int
    input_dim: int
    num_classes: int = 0
    likelihood: str = "bernoulli"


def _labels(loop: VaeConfig, n: int, labels: np.ndarray | None) -> dict[str, np.ndarray]:
    labels = cycle_labels(n, loop.num_classes, labels)
    return {} if labels is None else {"label": np.ascontiguousarray(labels)}


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Bernoulli means from logits, float32."""
    return (1 / (1 + np.exp(-logits))).astype(np.float32)


def decode(runners: Mapping[str, Runner], loop: VaeConfig, z: np.ndarray, labels: np.ndarray | None = None
           ) -> np.ndarray:
    """Pixel probabilities [n, D] of latents z [n, latent_dim]."""
    return sigmoid(runners["decoder"].infer({"z": z} | _labels(loop, len(z), labels))["logits"])


def sample_vae(runners: Mapping[str, Runner], loop: VaeConfig, n: int, seed: int,
               labels: np.ndarray | None = None) -> np.ndarray:
    """`n` decoded prior samples z ~ N(0, I) (labels cycling for a conditional VAE): probabilities [n, D]."""
    check_count(n)
    return decode(runners, loop, draw_latents(n, loop.latent_dim, seed), labels)


def slerp(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """`n` points on the great-circle path from a to b (the usual path between Gaussian latents)."""
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    omega = np.arccos(np.clip(cos, -1.0, 1.0))
    w = np.linspace(0.0, 1.0, n)[:, None]
    if omega < 1e-6:
        return ((1 - w) * a + w * b).astype(np.float32)
    return ((np.sin((1 - w) * omega) * a + np.sin(w * omega) * b) / np.sin(omega)).astype(np.float32)


def interpolate(runners: Mapping[str, Runner], loop: VaeConfig, n: int, seed: int,
                labels: np.ndarray | None = None) -> np.ndarray:
    """Decodings [n, D] along the slerp between two seeded latents (one label for the whole path)."""
    if n < 2:
        raise InputError(f"--n is {n}; an interpolation needs at least 2 points.")
    ends = draw_latents(2, loop.latent_dim, seed)
    label = None if labels is None else np.broadcast_to(np.asarray(labels).reshape(-1)[:1], (n,))
    if loop.num_classes and label is None:
        label = np.zeros(n, np.int64)
    return decode(runners, loop, slerp(ends[0], ends[1], n), label)


def iwae(runners: Mapping[str, Runner], loop: VaeConfig, x: np.ndarray, k: int, seed: int,
         labels: np.ndarray | None = None) -> np.ndarray:
    """log p(x) estimate per example [batch] from k importance samples (k = 1: the ELBO):
    logmeanexp_k log p(x | z_k) + log p(z_k) - log q(z_k | x), noise [k, batch, latent] from `seed`."""
    if k < 1:
        raise InputError(f"--k is {k}, expected at least 1 importance sample.")
    x = np.asarray(x, np.float32).reshape(len(x), -1)
    if x.shape[1] != loop.input_dim:
        raise InputError(f"x has {x.shape[1]} values per example; this VAE models {loop.input_dim}.")
    b, latent = len(x), loop.latent_dim
    noise = np.random.default_rng(seed).standard_normal((k, b, latent), dtype=np.float32)
    cond = _labels(loop, b, labels)
    feeds = {"x": np.tile(x, (k, 1)), "noise": noise.reshape(k * b, latent)}
    if cond:
        feeds["label"] = np.tile(cond["label"], k)
    enc = runners["encoder"].infer(feeds)
    logits = runners["decoder"].infer({"z": enc["z"]} | ({"label": feeds["label"]} if cond else {}))["logits"]
    xs = feeds["x"].astype(np.float64)
    log_px = -(np.maximum(logits, 0) - logits * xs + np.log1p(np.exp(-np.abs(logits)))).sum(-1)
    z, logvar = enc["z"].astype(np.float64), enc["logvar"].astype(np.float64)
    log_pz = (-0.5 * z**2 - HALF_LOG_2PI).sum(-1)
    log_qz = (-0.5 * noise.reshape(k * b, latent).astype(np.float64) ** 2 - 0.5 * logvar - HALF_LOG_2PI).sum(-1)
    weights = (log_px + log_pz - log_qz).reshape(k, b)
    top = weights.max(0)
    return top + np.log(np.exp(weights - top).mean(0))


def check_vae(runners: Runners, loop: VaeConfig, seed: int) -> dict[str, np.ndarray]:
    """Eight prior samples, an 8-point interpolation and the 16-sample IWAE estimate of four random binary x."""
    x = (np.random.default_rng(seed).random((4, loop.input_dim)) < 0.3).astype(np.float32)
    return {"samples": sample_vae(runners, loop, 8, seed), "interpolation": interpolate(runners, loop, 8, seed),
            "iwae": iwae(runners, loop, x, 16, seed)}


register(LoopKind(
    VaeConfig, "VAE", "sample", LabelOptions,
    sample=lambda runners, loop, n, seed, o: sample_vae(runners, loop, n, seed, o.labels),
    check=check_vae, writer=IMAGES,
))
