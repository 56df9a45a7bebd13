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
