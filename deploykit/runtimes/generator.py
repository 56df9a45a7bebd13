"""Sampling loop for GAN generators: latent noise drawn in numpy from a seed, batched through a runner."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import InputError
from .base import Runner


def draw_latents(n: int, latent_dim: int, seed: int) -> np.ndarray:
    """Standard normal latents [n, latent_dim], float32, from numpy's PCG64 seeded with `seed`."""
    return np.random.default_rng(seed).standard_normal((n, latent_dim), dtype=np.float32)


def sample_generator(
    runner: Runner,
    loop: Mapping[str, Any],
    n: int,
    seed: int,
    labels: np.ndarray | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """`n` images from a generator graph; conditional generators cycle labels 0..K-1 unless given."""
    if n < 1:
        raise InputError(f"--n is {n}, expected at least 1 sample.")
    classes = loop.get("num_classes")
    if classes is None and labels is not None:
        raise InputError("this generator is unconditional; drop --label.")
    z = draw_latents(n, int(loop["latent_dim"]), seed)
    if classes is not None:
        labels = np.arange(n) % classes if labels is None else np.broadcast_to(np.asarray(labels), (n,))
        labels = labels.astype(np.int64)
    images = []
    for start in range(0, n, batch_size):
        feeds = {"z": z[start : start + batch_size]}
        if labels is not None:
            feeds["label"] = np.ascontiguousarray(labels[start : start + batch_size])
        images.append(runner.infer(feeds)[runner.spec.output_names()[0]])
    return np.concatenate(images)
