"""Reference GANs on 8x8 digits: DCGAN and conditional GAN generators, CycleGAN-style generator.

Generators output images in [-1, 1] (tanh). Protocols: `latent_dim` (and `num_classes` for
conditional models); `input_shape` and `spatial_multiple` for image-to-image generators.
"""

from __future__ import annotations

import torch
from torch import nn


def up_block(cin: int, cout: int) -> nn.Sequential:
    """Transposed conv doubling H and W, BatchNorm, ReLU (Radford et al. 2016)."""
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class DCGANGenerator(nn.Module):
    """z [B, latent_dim] -> image [B, 1, 8, 8] through 1x1 -> 2x2 -> 4x4 -> 8x8 transposed convs."""

    def __init__(self, latent_dim: int = 16, width: int = 64, channels: int = 1) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.net = nn.Sequential(
            nn.ConvTranspose2d(latent_dim, width, 2, 1, 0, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            up_block(width, width // 2),
            nn.ConvTranspose2d(width // 2, channels, 4, 2, 1),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None])


class ConditionalGenerator(nn.Module):
    """Conditional GAN generator (Mirza & Osindero 2014): the label embedding joins z."""

    def __init__(self, latent_dim: int = 16, num_classes: int = 10, width: int = 64, embed: int = 8) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes, embed)
        self.body = DCGANGenerator(latent_dim + embed, width)

    def forward(self, z: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([z, self.embed(label)], dim=1))


class Discriminator(nn.Module):
    """8x8 image (plus optional label map) -> real/fake logit."""

    def __init__(self, width: int = 32, num_classes: int = 0) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_classes, 64) if num_classes else None
        cin = 2 if num_classes else 1
        self.net = nn.Sequential(
            nn.Conv2d(cin, width, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(2 * width * 4, 1),
        )

    def forward(self, image: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None and label is not None:
            image = torch.cat([image, self.embed(label).view(-1, 1, 8, 8)], dim=1)
        return self.net(image).squeeze(1)


class ResnetBlock(nn.Module):
    """Reflection-padded conv + InstanceNorm residual block of the CycleGAN generator."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels, affine=True),
            nn.ReLU(),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels, affine=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class CycleGANGenerator(nn.Module):
    """CycleGAN generator (Zhu et al. 2017), scaled down: any H, W divisible by 2 and >= 8."""

    def __init__(self, channels: int = 1, width: int = 16, blocks: int = 2, size: int = 8) -> None:
        super().__init__()
        self.input_shape = (channels, size, size)
        self.spatial_multiple = 2
        self.spatial_min = 8
        w = width
        self.net = nn.Sequential(
            nn.ReflectionPad2d(3),
            nn.Conv2d(channels, w, 7),
            nn.InstanceNorm2d(w, affine=True),
            nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            nn.InstanceNorm2d(2 * w, affine=True),
            nn.ReLU(),
            *[ResnetBlock(2 * w) for _ in range(blocks)],
            nn.ConvTranspose2d(2 * w, w, 3, stride=2, padding=1, output_padding=1),
            nn.InstanceNorm2d(w, affine=True),
            nn.ReLU(),
            nn.ReflectionPad2d(3),
            nn.Conv2d(w, channels, 7),
            nn.Tanh(),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)


class PatchDiscriminator(nn.Module):
    """Small PatchGAN discriminator for the CycleGAN domains."""

    def __init__(self, channels: int = 1, width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 3, 1, 1),
            nn.InstanceNorm2d(2 * width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 1, 3, 1, 1),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)
