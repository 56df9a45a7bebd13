"""Built-in data: scikit-learn's digits (ships with the package), split deterministically."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Digits:
    """8x8 grey digits in [0, 1], shape [N, 1, 8, 8], with integer labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Digits:
    """The 1797 scikit-learn digits, shuffled with `seed`, last `test_fraction` held out."""
    from sklearn.datasets import load_digits as sk_digits

    data = sk_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None, :, :]
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    n_test = int(len(x) * test_fraction)
    return Digits(x[n_test:], y[n_test:], x[:n_test], y[:n_test])


def segmentation_target(images: np.ndarray, labels: np.ndarray, threshold: float = 0.25) -> np.ndarray:
    """Per-pixel classes for the U-Net task: 0 = background, 1 + digit where ink exceeds `threshold`."""
    ink = images[:, 0] > threshold
    return np.where(ink, labels[:, None, None] + 1, 0).astype(np.int64)


def python_text() -> str:
    """English text that ships with every Python: the Zen of Python and a few stdlib module docstrings."""
    import argparse
    import codecs
    import collections
    import contextlib
    import io
    import json
    import string

    with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints the Zen
        import this
    docs = [codecs.decode(this.s, "rot13")] + [m.__doc__ or "" for m in (json, argparse, string, collections)]
    return "\n\n".join(d.strip() for d in docs) + "\n"


def held_out_text(alphabet: str | list[str] | None = None) -> str:
    """English text the zoo language models did not train on (python_text's is theirs): docstrings of other stdlib
    modules, kept to `alphabet`'s characters when given."""
    import functools
    import heapq
    import re
    import textwrap

    text = "\n\n".join((m.__doc__ or "").strip() for m in (re, textwrap, functools, heapq)) + "\n"
    return text if alphabet is None else "".join(c for c in text if c in set(alphabet))


def noisy_tones(n: int, length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(noisy, clean) [n, length, 1]: sums of two sines of random frequency and phase, plus N(0, 0.3^2) noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)[None, :]
    freq = rng.uniform(0.02, 0.12, size=(n, 2, 1))
    phase = rng.uniform(0, 2 * np.pi, size=(n, 2, 1))
    clean = (np.sin(2 * np.pi * freq * t[:, None] + phase).sum(1) / 2).astype(np.float32)
    noisy = clean + rng.normal(0, 0.3, size=clean.shape).astype(np.float32)
    return noisy[..., None], clean[..., None]


def digit_strings(n: int, seed: int, min_len: int = 1, max_len: int = 12) -> list[np.ndarray]:
    """`n` random digit sequences (token ids 0-9) with lengths uniform in [min_len, max_len]."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 10, size=int(rng.integers(min_len, max_len + 1))) for _ in range(n)]


def trajectories(n: int, length: int, seed: int) -> np.ndarray:
    """[n, length, 2] noisy 2-D orbits: random radius, start angle, turning speed and direction."""
    rng = np.random.default_rng(seed)
    radius = rng.uniform(0.5, 1.5, size=(n, 1))
    speed = rng.uniform(0.15, 0.35, size=(n, 1)) * rng.choice([-1.0, 1.0], size=(n, 1))
    angle = rng.uniform(0, 2 * np.pi, size=(n, 1)) + speed * np.arange(length)[None, :]
    points = np.stack([radius * np.cos(angle), radius * np.sin(angle)], -1)
    return (points + rng.normal(0, 0.05, size=points.shape)).astype(np.float32)


def binarized_digits(data: Digits) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) digits as 0/1 float32 vectors [N, 64]: ink above half intensity."""
    return tuple((x.reshape(len(x), -1) > 0.5).astype(np.float32) for x in (data.x_train, data.x_test))  # type: ignore[return-value]


def level_digits(x: np.ndarray, levels: int) -> np.ndarray:
    """Digits [N, 1, 8, 8] in [0, 1] as integer levels 0..levels-1 (int64)."""
    return np.round(x * (levels - 1)).astype(np.int64)


def tone_clips(n: int, length: int, seed: int, sample_rate: int = 8000) -> tuple[np.ndarray, np.ndarray]:
    """(audio [n, length] in [-1, 1], kind [n]): mixtures of kind + 1 tones of 150-700 Hz, with faint noise."""
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 3, n)
    t = np.arange(length) / sample_rate
    freq = rng.uniform(150, 700, (n, 3, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, 3, 1))
    on = (np.arange(3)[None, :] <= kind[:, None])[..., None]
    audio = (np.sin(2 * np.pi * freq * t + phase) * on).sum(1) * (0.6 / (kind[:, None] + 1))
    audio += rng.normal(0, 0.01, audio.shape)
    return np.clip(audio, -1, 1).astype(np.float32), kind.astype(np.int64)


def toy_2d(name: str, n: int, seed: int) -> np.ndarray:
    """[n, 2] points of a scikit-learn toy set ('moons' or 'rings'), scaled to roughly unit variance."""
    from sklearn.datasets import make_circles, make_moons

    if name == "moons":
        points, _ = make_moons(n, noise=0.05, random_state=seed)
        points = (points - np.array([0.5, 0.25])) / np.array([0.87, 0.5])
    elif name == "rings":
        points, _ = make_circles(n, noise=0.04, factor=0.5, random_state=seed)
        points = points / 0.56
    else:
        raise ValueError(f"toy set {name!r}: expected 'moons' or 'rings'.")
    return points.astype(np.float32)
