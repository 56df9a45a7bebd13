"""Reference feed-forward models: MLP, CNN, U-Net (FCN) and a deterministic autoencoder.

Each follows its family's protocol (see README, "Exporting your own model"): `input_shape`
(without batch), plus `spatial_multiple` for fully convolutional models.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrizations


class MLP(nn.Module):
    """Multi-layer perceptron with BatchNorm, Dropout and a weight-normed layer (folded at export)."""

    def __init__(self, in_features: int = 64, hidden: int = 128, classes: int = 10, dropout: float = 0.1) -> None:
        super().__init__()
        self.input_shape = (in_features,)
        self.net = nn.Sequential(
            parametrizations.weight_norm(nn.Linear(in_features, hidden)),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden // 2, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """Conv (same padding for stride 1) + BatchNorm + ReLU."""
    pad = dilation * (k - 1) // 2
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class ResidualBlock(nn.Module):
    """Dilated 3x3 conv then 1x1 conv, added to the input (He et al. 2016)."""

    def __init__(self, channels: int, dilation: int = 2) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(channels, channels, 3, dilation=dilation),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class CNN(nn.Module):
    """Digit classifier: stride, dilation, max pooling, a residual block, 1x1 convs, linear head."""

    def __init__(self, channels: int = 1, size: int = 8, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.input_shape = (channels, size, size)
        self.features = nn.Sequential(
            conv_bn(channels, width),
            ResidualBlock(width, dilation=2),
            conv_bn(width, 2 * width, 3, stride=2),  # size/2
            nn.MaxPool2d(2),  # size/4
            nn.Conv2d(2 * width, 2 * width, 1),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(2 * width * (size // 4) ** 2, classes))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image))


class UNet(nn.Module):
    """Small U-Net (Ronneberger et al. 2015) for per-pixel classes; any H, W divisible by 4.

    Decoder uses a transposed conv, max-unpooling with the encoder's indices, nearest and
    bilinear upsampling, and skip connections.
    """

    def __init__(self, channels: int = 1, classes: int = 11, width: int = 16, size: int = 8) -> None:
        super().__init__()
        self.input_shape = (channels, size, size)
        self.spatial_multiple = 4
        w = width
        self.enc1 = nn.Sequential(conv_bn(channels, w), conv_bn(w, w))
        self.pool1 = nn.MaxPool2d(2, return_indices=True)
        self.enc2 = nn.Sequential(conv_bn(w, 2 * w), conv_bn(2 * w, 2 * w))
        self.pool2 = nn.MaxPool2d(2)
        self.bottleneck = conv_bn(2 * w, 2 * w)
        self.up2 = nn.ConvTranspose2d(2 * w, 2 * w, 2, stride=2)
        self.dec2 = conv_bn(4 * w, w)
        self.unpool1 = nn.MaxUnpool2d(2)
        self.nearest = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec1 = conv_bn(3 * w, w)
        self.aux = nn.Sequential(nn.Upsample(scale_factor=4, mode="bilinear", align_corners=False), nn.Conv2d(2 * w, classes, 1))
        self.head = nn.Conv2d(w, classes, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(image)
        p1, idx1 = self.pool1(e1)
        e2 = self.enc2(p1)
        b = self.bottleneck(self.pool2(e2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], dim=1))
        d1 = self.dec1(torch.cat([self.unpool1(d2, idx1), self.nearest(d2), e1], dim=1))
        return self.head(d1) + self.aux(b)


class AutoEncoder(nn.Module):
    """Deterministic autoencoder: encoder x -> code, decoder code -> reconstruction in [0, 1]."""

    def __init__(self, in_features: int = 64, hidden: int = 128, code: int = 12) -> None:
        super().__init__()
        self.input_shape = (in_features,)
        self.encoder = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, code))
        self.decoder = nn.Sequential(nn.Linear(code, hidden), nn.ReLU(), nn.Linear(hidden, in_features), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))
