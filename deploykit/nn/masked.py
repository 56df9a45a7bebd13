"""Masked layers and orderings shared by the zoo, the masked-model exporters and users' own models.

A masked layer keeps its 0/1 mask as a buffer and multiplies it in at run time; the exporter folds
weight * mask into one constant. Orderings are permutations of the flat dimensions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def check_ordering(ordering: Sequence[int], size: int, what: str) -> list[int]:
    """`ordering` as a list when it is a permutation of 0..size-1, else ValueError naming what is wrong."""
    order = [int(i) for i in ordering]
    counts = np.bincount(np.clip(order, 0, size), minlength=size + 1) if order else np.zeros(size + 1, int)
    repeated = [i for i in range(size) if counts[i] > 1]
    missing = [i for i in range(size) if counts[i] == 0]
    outside = [i for i in order if not 0 <= i < size]
    if len(order) != size or repeated or missing or outside:
        raise ValueError(
            f"{what} is not a permutation of 0..{size - 1}: {len(order)} entries"
            + (f", repeated {repeated[:5]}" if repeated else "")
            + (f", missing {missing[:5]}" if missing else "")
            + (f", out of range {outside[:5]}" if outside else "")
            + "; give each index exactly once."
        )
    return order


def ranks(ordering: Sequence[int]) -> torch.Tensor:
    """rank[i] = position of dimension i in `ordering`."""
    out = torch.empty(len(ordering), dtype=torch.long)
    out[torch.tensor(list(ordering))] = torch.arange(len(ordering))
    return out


class MaskedLinear(nn.Linear):
    """Linear layer whose weight is multiplied by a fixed 0/1 mask (buffer `mask`, shape of weight)."""

    def __init__(self, in_features: int, out_features: int, mask: torch.Tensor) -> None:
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MaskedConv2d(nn.Conv2d):
    """Conv2d whose kernel is multiplied by a fixed 0/1 mask (buffer `mask`, shape of weight)."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int], mask: torch.Tensor, padding: tuple[int, int]) -> None:
        super().__init__(cin, cout, kernel, padding=padding)
        self.register_buffer("mask", mask.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)


def channel_groups(channels: int, colours: int, halves: int = 1) -> torch.Tensor:
    """Colour group (0=R, 1=G, 2=B) of each of `channels` feature maps, split into `halves` equal blocks."""
    block = channels // halves
    return (torch.arange(channels) % block) // (block // colours)


def centre_mask(out_groups: torch.Tensor, in_groups: torch.Tensor, inclusive: bool) -> torch.Tensor:
    """[out, in] connections allowed at the current pixel: earlier colours (and the same one if inclusive)."""
    allowed = in_groups[None, :] < out_groups[:, None]
    return allowed | (in_groups[None, :] == out_groups[:, None]) if inclusive else allowed


def pixel_mask(cin: int, cout: int, k: int, colours: int, kind: str, image_input: bool = False) -> torch.Tensor:
    """PixelCNN mask [cout, cin, k, k]: rows above and pixels to the left, plus the R->G->B rule at the centre."""
    mask = torch.zeros(cout, cin, k, k)
    mask[:, :, : k // 2] = 1
    mask[:, :, k // 2, : k // 2] = 1
    in_groups = torch.arange(cin) if image_input else channel_groups(cin, colours)
    mask[:, :, k // 2, k // 2] = centre_mask(channel_groups(cout, colours), in_groups, kind == "B")
    return mask
