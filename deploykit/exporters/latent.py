"""Latent-variable families: VAE, beta-VAE and conditional VAE as an encoder graph and a decoder graph.

The encoder takes the reparameterization noise as an input (z = mu + sigma * noise), so sampling,
reconstruction and the IWAE estimate all run with noise drawn outside the graph.
"""

from __future__ import annotations

import torch
from torch import nn

from ..runtimes.vae import VaeConfig
from ..specs import TensorSpec
from .feedforward import BATCHES
from .registry import Family, Role, Tolerance, attribute, register

VAE_PROTOCOL = (
    "`latent_dim`, `input_dim`, `image_shape` and `num_classes` (0: unconditional); encode(x [batch, input_dim]"
    "[, label]) -> (mu, log sigma^2) [batch, latent_dim]; decode(z[, label]) -> Bernoulli logits [batch, input_dim]."
)


class EncoderGraph(nn.Module):
    """(x, noise[, label]) -> (mu, logvar, z = mu + exp(logvar / 2) * noise)."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, noise: torch.Tensor, label: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.vae.encode(x, label)
        return mu, logvar, mu + torch.exp(0.5 * logvar) * noise


class DecoderGraph(nn.Module):
    """(z[, label]) -> Bernoulli logits."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        return self.vae.decode(z, label)


def _vae_roles(model: nn.Module) -> dict[str, Role]:
    dim = int(attribute(model, "input_dim", "vae", VAE_PROTOCOL))
    latent = int(attribute(model, "latent_dim", "vae", VAE_PROTOCOL))
    classes = int(attribute(model, "num_classes", "vae", VAE_PROTOCOL))
    label = (TensorSpec("label", "int64", ("batch",), high=classes),) if classes else ()
    x = TensorSpec("x", "float32", ("batch", dim))
    z = TensorSpec("z", "float32", ("batch", latent))
    return {
        "encoder": Role(EncoderGraph(model), (x, TensorSpec("noise", "float32", ("batch", latent)), *label),
                        ("mu", "logvar", "z"), {"batch": 2}),
        "decoder": Role(DecoderGraph(model), (z, *label), ("logits",), {"batch": 2}),
    }


def _vae_loop(model: nn.Module) -> VaeConfig:
    return VaeConfig(latent_dim=int(model.latent_dim), input_dim=int(model.input_dim), num_classes=int(model.num_classes),
                     image_shape=[int(d) for d in attribute(model, "image_shape", "vae", VAE_PROTOCOL)],
                     likelihood="bernoulli", value_range=[0.0, 1.0])


# Two small MLPs: errors are those of float32 matmuls (seen ~1e-6 on logits); the IWAE estimate
# sums 64 Bernoulli log-likelihoods, so the loop check's log p(x) is held to rtol.
register(Family("vae", "VAE / beta-VAE / conditional VAE: encoder (reparameterization noise as input) and decoder",
                VAE_PROTOCOL, _vae_roles, lambda m: BATCHES, Tolerance(1e-4, 1e-4), ("vae",), _vae_loop))
