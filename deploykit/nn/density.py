"""Log-density constants and helpers shared by the torch models and the numpy runtime (no torch)."""

from __future__ import annotations

import math

import numpy as np

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def bits_from_log_prob(log_prob: np.ndarray, dims: int, levels: int) -> np.ndarray:
    """Bits per dimension of discrete data from the dequantized log-density of D = `dims` values in [0, 1):
    -(log p - D log L) / (D log 2), an upper bound on the discrete model's."""
    return -(np.asarray(log_prob, np.float64) - dims * math.log(levels)) / (dims * math.log(2))
