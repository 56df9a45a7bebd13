"""Sampling loop for GAN generators: latent noise drawn in numpy from a seed, batched through a runner."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backends.base import Runner
from ..checks import check_count
from ..errors import BundleError, InputError
from .kinds import IMAGES, ImageLayout, LoopKind, Runners, SampleOptions, register


@dataclass(frozen=True, kw_only=True)
class GeneratorConfig(ImageLayout):
    """A generator graph `model`: z [latent_dim] (and a label when num_classes > 0) -> image."""

    kind = "generator"
    latent_dim: int
    num_classes: int = 0


@dataclass(frozen=True)
class LabelOptions(SampleOptions):
    """Class labels for a conditional model: one, broadcast, or one per sample (default: cycle 0..K-1)."""

    labels: np.ndarray | None = None


def draw_latents(n: int, latent_dim: int, seed: int) -> np.ndarray:
    """Standard normal latents [n, latent_dim], float32, from numpy's PCG64 seeded with `seed`."""
    return np.random.default_rng(seed).standard_normal((n, latent_dim), dtype=np.float32)


def cycle_labels(n: int, classes: int | None, labels: np.ndarray | None) -> np.ndarray | None:
    """int64 labels [n] for a conditional model: `labels` broadcast, or 0..classes-1 cycling; None if unconditional.
    InputError for labels outside 0..classes-1."""
    if classes is not None and classes < 0:
        raise BundleError(f"this bundle's loop has num_classes {classes}; a class count is >= 0. Re-export the bundle.")
    if not classes:
        if labels is not None:
            raise InputError("this model is unconditional; drop --label.")
        return None
    if labels is None:
        out = np.arange(n) % classes
    else:
        given = np.asarray(labels)
        if given.dtype.kind not in "iu" or given.ndim > 1 or given.size not in (1, n):
            raise InputError(f"labels are {given.dtype} of shape {list(given.shape)}; expected one integer label or "
                             f"{n} (one per sample).")
        out = np.broadcast_to(given.reshape(-1), (n,))
    out = out.astype(np.int64)
    bad = out[(out < 0) | (out >= classes)]
    if bad.size:
        raise InputError(f"--label {int(bad[0])} is out of range; this model has classes 0..{classes - 1}.")
    return out


def sample_generator(
    runner: Runner,
    loop: GeneratorConfig,
    n: int,
    seed: int,
    labels: np.ndarray | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """`n` images from a generator graph; conditional generators cycle labels 0..K-1 unless given."""
    check_count(n)
    labels = cycle_labels(n, loop.num_classes, labels)
    z = draw_latents(n, loop.latent_dim, seed)
    images = []
    for start in range(0, n, batch_size):
        feeds = {"z": z[start : start + batch_size]}
        if labels is not None:
            feeds["label"] = np.ascontiguousarray(labels[start : start + batch_size])
        images.append(runner.infer(feeds)[runner.spec.output_names()[0]])
    return np.concatenate(images)


def check_generator(runners: Runners, loop: GeneratorConfig, seed: int) -> dict[str, np.ndarray]:
    """Eight samples (labels cycling for conditional generators)."""
    return {"images": sample_generator(runners["model"], loop, 8, seed)}


register(LoopKind(
    GeneratorConfig, "generator", "sample", LabelOptions,
    sample=lambda runners, loop, n, seed, o: sample_generator(runners["model"], loop, n, seed, o.labels),
    check=check_generator, writer=IMAGES,
))
