"""Energy models: restricted Boltzmann machines (Bernoulli-Bernoulli, Gaussian-Bernoulli) and Hopfield networks.

Sampling takes its randomness from outside: Bernoulli units switch on when an injected uniform is
below their probability, Gaussian visibles add sigma times an injected standard normal. The same
noise therefore gives the same chain in torch and in any exported graph.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class RBM(nn.Module):
    """E(v, h) = -v W h - b v - c h (Bernoulli visibles) or |v - b|^2 / (2 sigma^2) - v W h / sigma - c h (Gaussian)."""

    def __init__(self, visible: int = 64, hidden: int = 64, visible_type: str = "bernoulli") -> None:
        super().__init__()
        if visible_type not in ("bernoulli", "gaussian"):
            raise ValueError(f"visible_type {visible_type!r}: expected 'bernoulli' or 'gaussian'.")
        self.visible, self.hidden, self.visible_type = visible, hidden, visible_type
        self.image_shape = (1, 8, 8) if visible == 64 else (visible,)
        self.weight = nn.Parameter(torch.randn(visible, hidden) * 0.01)
        self.visible_bias = nn.Parameter(torch.zeros(visible))
        self.hidden_bias = nn.Parameter(torch.zeros(hidden))
        self.register_buffer("sigma", torch.ones(visible))  # Gaussian visibles: per-unit std, fixed from data

    def hidden_probability(self, v: torch.Tensor) -> torch.Tensor:
        """p(h = 1 | v)."""
        scaled = v / self.sigma if self.visible_type == "gaussian" else v
        return torch.sigmoid(scaled @ self.weight + self.hidden_bias)

    def visible_mean(self, h: torch.Tensor) -> torch.Tensor:
        """E[v | h]: p(v = 1 | h) for Bernoulli visibles, the Gaussian mean otherwise."""
        act = nn.functional.linear(h, self.weight)  # h W^T without a transposed view (scan refuses aliased inputs)
        if self.visible_type == "gaussian":
            return self.visible_bias + self.sigma * act
        return torch.sigmoid(act + self.visible_bias)

    def gibbs_step(self, v: torch.Tensor, hidden_uniform: torch.Tensor, visible_noise: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """v -> h -> v' with injected noise: (v', h, E[v' | h])."""
        h = (hidden_uniform < self.hidden_probability(v)).to(v.dtype)
        mean = self.visible_mean(h)
        if self.visible_type == "gaussian":
            return mean + self.sigma * visible_noise, h, mean
        return (visible_noise < mean).to(v.dtype), h, mean

    def forward(self, v: torch.Tensor, hidden_uniforms: torch.Tensor, visible_noise: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """k Gibbs steps (k = hidden_uniforms.shape[0]), a Python loop: the reference the exported scan is checked on."""
        h = mean = v
        for k in range(hidden_uniforms.shape[0]):
            v, h, mean = self.gibbs_step(v, hidden_uniforms[k], visible_noise[k])
        return v, h, mean

    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        """F(v) = -log sum_h exp(-E(v, h)), per example (up to the partition function)."""
        if self.visible_type == "gaussian":
            scaled = v / self.sigma
            bias = 0.5 * (((v - self.visible_bias) / self.sigma) ** 2).sum(-1)
        else:
            scaled, bias = v, -(v @ self.visible_bias)
        return bias - nn.functional.softplus(scaled @ self.weight + self.hidden_bias).sum(-1)


class Hopfield(nn.Module):
    """A Hopfield network of +-1 units with symmetric, zero-diagonal weights (projection rule) and thresholds 0.

    One update is synchronous: s_i <- sign(sum_j W_ij s_j), a unit with zero input keeps its state.
    Energy E(s) = -1/2 s W s.
    """

    def __init__(self, units: int = 64, capacity: int = 10) -> None:
        super().__init__()
        self.units = units
        self.image_shape = (1, 8, 8) if units == 64 else (units,)
        self.register_buffer("weight", torch.zeros(units, units))
        self.register_buffer("patterns", torch.zeros(capacity, units))

    def store(self, patterns: np.ndarray) -> None:
        """Store +-1 patterns [P, units] with the pseudo-inverse rule W = X^T (X X^T)^-1 X, diagonal zeroed."""
        x = np.asarray(patterns, np.float64)
        if x.shape != tuple(self.patterns.shape):
            raise ValueError(f"patterns {x.shape}: this network stores {tuple(self.patterns.shape)}.")
        weight = x.T @ np.linalg.pinv(x @ x.T) @ x
        np.fill_diagonal(weight, 0.0)
        self.weight = torch.from_numpy(weight.astype(np.float32))
        self.patterns = torch.from_numpy(x.astype(np.float32))

    def forward(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One synchronous update: (next state, energy of the current state)."""
        field = state @ self.weight
        energy = -0.5 * (field * state).sum(-1)
        return torch.where(field > 0, 1.0, torch.where(field < 0, -1.0, state)), energy

