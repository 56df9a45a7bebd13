"""Variational autoencoders of binarized digits: VAE, beta-VAE (the `beta` of the loss), conditional VAE
(a label input to encoder and decoder) and the IWAE bound, with Bernoulli pixels and a N(0, I) prior."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..nn.density import HALF_LOG_2PI


class VAE(nn.Module):
    """Encoder x[, label] -> (mu, log sigma^2); decoder z[, label] -> Bernoulli logits of the 64 pixels."""

    def __init__(self, input_dim: int = 64, hidden: int = 128, latent_dim: int = 8, num_classes: int = 0,
                 beta: float = 1.0) -> None:
        super().__init__()
        self.input_dim, self.latent_dim, self.num_classes, self.beta = input_dim, latent_dim, num_classes, beta
        self.image_shape = (1, 8, 8)
        extra = num_classes
        self.encoder = nn.Sequential(nn.Linear(input_dim + extra, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                     nn.Linear(hidden, 2 * latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim + extra, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                     nn.Linear(hidden, input_dim))

    def _with_label(self, h: torch.Tensor, label: torch.Tensor | None) -> torch.Tensor:
        return torch.cat([h, F.one_hot(label, self.num_classes).to(h.dtype)], dim=-1) if self.num_classes else h

    def encode(self, x: torch.Tensor, label: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log sigma^2) of q(z | x[, label]), each [batch, latent_dim]."""
        mu, logvar = self.encoder(self._with_label(x, label)).chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 8.0)

    def decode(self, z: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """Bernoulli logits of p(x | z[, label]), [batch, input_dim]."""
        return self.decoder(self._with_label(z, label))

    def forward(self, x: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction logits through the posterior mean."""
        return self.decode(self.encode(x, label)[0], label)

    def loss(self, x: torch.Tensor, noise: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """Negative ELBO with the KL term weighted by beta (beta = 1: the VAE; beta > 1: beta-VAE), per example."""
        mu, logvar = self.encode(x, label)
        z = mu + torch.exp(0.5 * logvar) * noise
        recon = F.binary_cross_entropy_with_logits(self.decode(z, label), x, reduction="none").sum(-1)
        kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(-1)
        return recon + self.beta * kl

    def iwae(self, x: torch.Tensor, noise: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x) estimate from K importance samples (noise [K, batch, latent_dim]): logmeanexp_k of
        log p(x | z_k) + log p(z_k) - log q(z_k | x), per example [batch]. K = 1 is the ELBO."""
        mu, logvar = self.encode(x, label)
        z = mu + torch.exp(0.5 * logvar) * noise
        labels = None if label is None else label.expand(noise.shape[0], -1)
        logits = self.decode(z, labels)
        log_px = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
        log_pz = (-0.5 * z**2 - HALF_LOG_2PI).sum(-1)
        log_qz = (-0.5 * noise**2 - 0.5 * logvar - HALF_LOG_2PI).sum(-1)
        return torch.logsumexp(log_px + log_pz - log_qz, dim=0) - math.log(noise.shape[0])
