"""A model written by a user, not from deploykit.models, exported through the `cnn` family protocol.

    deploykit export examples.my_model:build_model --family cnn --out bundles/mine

The protocol of `cnn`: an attribute `input_shape = (C, H, W)` and forward(image) -> logits.
"""

import torch
from torch import nn


class TinyNet(nn.Module):
    """Two convs and a linear head for 1x8x8 images."""

    def __init__(self) -> None:
        super().__init__()
        self.input_shape = (1, 8, 8)  # the only thing deploykit needs besides forward()
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten()
        )
        self.head = nn.Linear(8 * 4 * 4, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(image))


def build_model() -> nn.Module:
    """Factory deploykit calls; load your trained weights here (torch.load(..., weights_only=True))."""
    torch.manual_seed(0)
    return TinyNet().eval()
