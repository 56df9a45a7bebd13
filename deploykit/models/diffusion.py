"""Denoising networks: an eps-prediction U-Net for 8x8 images, an MLP for vectors (VAE latents),
a noise-conditional score network for 2-D points, and the latent-diffusion pair (decoder + denoiser).

Every network takes (x, t int64 [batch]) and, when `num_classes` > 0, a label int64 [batch] in
0..num_classes, where num_classes itself is the null label of classifier-free guidance.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..runtimes.schedulers.noise_schedule import alphas_cumprod, zoo_config
from .vae import VAE


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer-style embedding of integer timesteps: [batch] -> [batch, dim] (sin half, cos half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding of t through a 2-layer MLP, plus a class embedding (null label last) if conditional."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.classes = nn.Embedding(num_classes + 1, dim) if num_classes else None

    def forward(self, t: torch.Tensor, label: torch.Tensor | None) -> torch.Tensor:
        emb = self.mlp(sinusoidal_embedding(t, self.dim))
        return emb if self.classes is None or label is None else emb + self.classes(label)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the embedding added in between, 1x1 skip when channels change."""

    def __init__(self, c_in: int, c_out: int, emb: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(8, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.emb(emb)[:, :, None, None]
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class DiffusionConfig:
    """Protocol attributes shared by the diffusion networks (read by the exporter)."""

    def _configure(self, event_shape: tuple[int, ...], training_steps: int, schedule: str, num_classes: int,
                   clip_sample: float) -> None:
        self.event_shape = tuple(event_shape)
        self.training_steps = training_steps
        self.schedule = schedule
        self.num_classes = num_classes
        self.clip_sample = clip_sample

    def alphas_cumprod(self) -> torch.Tensor:
        """alpha-bar_t as float32 [T], from the same numpy schedule the samplers use."""
        config = zoo_config(self.schedule, self.training_steps, self.clip_sample)
        return torch.from_numpy(alphas_cumprod(config).astype(np.float32))


class UNetDenoiser(nn.Module, DiffusionConfig):
    """eps(x_t, t[, label]) for [batch, C, 8, 8] images in [-1, 1]: two resolutions, skip concatenation."""

    def __init__(self, channels: int = 1, size: int = 8, base: int = 16, num_classes: int = 10,
                 training_steps: int = 1000, schedule: str = "linear") -> None:
        super().__init__()
        self._configure((channels, size, size), training_steps, schedule, num_classes, 1.0)
        emb = 4 * base
        self.embed = TimeEmbedding(emb, num_classes)
        self.conv_in = nn.Conv2d(channels, base, 3, padding=1)
        self.down = ResBlock(base, base, emb)
        self.pool = nn.Conv2d(base, base, 3, stride=2, padding=1)
        self.mid = ResBlock(base, 2 * base, emb)
        self.up = ResBlock(3 * base, base, emb)
        self.out = nn.Sequential(nn.GroupNorm(8, base), nn.SiLU(), nn.Conv2d(base, channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.embed(t, label)
        skip = self.down(self.conv_in(x), emb)
        h = self.mid(self.pool(skip), emb)
        h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        return self.out(self.up(torch.cat([h, skip], dim=1), emb))


class VectorDenoiser(nn.Module, DiffusionConfig):
    """eps(x_t, t[, label]) for vectors: an MLP on [x, embedding(t)] with SiLU and a residual hidden stack."""

    def __init__(self, dim: int = 8, hidden: int = 256, num_classes: int = 0, training_steps: int = 1000,
                 schedule: str = "cosine", clip_sample: float = 0.0) -> None:
        super().__init__()
        self._configure((dim,), training_steps, schedule, num_classes, clip_sample)
        self.embed = TimeEmbedding(hidden, num_classes)
        self.inp = nn.Linear(dim, hidden)
        self.hidden = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(3)])
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.embed(t, label)
        h = self.inp(x)
        for layer in self.hidden:
            h = h + layer(F.silu(h + emb))
        return self.out(F.silu(h))


class ScoreNet(nn.Module):
    """Noise-conditional score network s(x, i) ~ grad log p_sigma_i(x) for 2-D points (NCSN):
    an MLP output divided by sigma_i, levels i = 0..L-1 from the largest sigma to the smallest."""

    def __init__(self, dim: int = 2, hidden: int = 128, sigma_max: float = 1.0, sigma_min: float = 0.01,
                 levels: int = 10, step_size: float = 5e-5) -> None:
        super().__init__()
        self.event_shape = (dim,)
        self.sigma_values = np.geomspace(sigma_max, sigma_min, levels).tolist()
        self.step_size = step_size
        self.register_buffer("sigmas", torch.tensor(self.sigma_values, dtype=torch.float32))
        self.level = nn.Embedding(levels, hidden)
        self.inp = nn.Linear(dim, hidden)
        self.hidden = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(2)])
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for layer in self.hidden:
            h = h + layer(F.silu(h + self.level(t)))
        return self.out(F.silu(h)) / self.sigmas[t][:, None]


class LatentDiffusion(nn.Module):
    """Latent diffusion: a VAE (its decoder maps latents to pixels) and a denoiser over its latents divided by
    `latent_scale` (the latents' standard deviation, measured on the training set, stored as a buffer)."""

    def __init__(self, latent_dim: int = 8, hidden: int = 128) -> None:
        super().__init__()
        self.vae = VAE(latent_dim=latent_dim)
        self.denoiser = VectorDenoiser(latent_dim, hidden)
        self.register_buffer("latent_scale", torch.ones(()))
        self.image_shape = self.vae.image_shape
