"""Masked autoregressive models: FVSBN, NADE, MADE, PixelCNN (plain and gated) and WaveNet.

Each computes every conditional p(x_i | x_<i) in one parallel pass. Masked layers keep their
mask as a buffer and multiply it in at run time; the exporter folds weight * mask into one
constant (see exporters/autoregressive.py). Orderings are permutations of the flat dimensions.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..nn.masked import MaskedConv2d, MaskedLinear, centre_mask, channel_groups, check_ordering, pixel_mask, ranks


class FVSBN(nn.Module):
    """Fully visible sigmoid belief net: p(x_i = 1 | x_<i) = sigmoid(b_i + sum_{j<i} W_ij x_j)."""

    distribution = "bernoulli"

    def __init__(self, dim: int = 64, ordering: Sequence[int] | None = None, image_shape: Sequence[int] | None = None) -> None:
        super().__init__()
        order = check_ordering(range(dim) if ordering is None else ordering, dim, "FVSBN ordering")
        self.num_inputs, self.orderings, self.image_shape = dim, [order], image_shape
        r = ranks(order)
        self.linear = MaskedLinear(dim, dim, r[None, :] < r[:, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class NADE(nn.Module):
    """NADE (Larochelle & Murray 2011): shared hidden weights, h_i = sigmoid(c + W[:, <i] x_<i).

    `forward` computes all conditionals at once with an exclusive cumulative sum; `step` is the
    O(H) recursion used for sampling: it adds the previous dimension's column to a running sum.
    """

    distribution = "bernoulli"

    def __init__(
        self, dim: int = 64, hidden: int = 64, ordering: Sequence[int] | None = None, image_shape: Sequence[int] | None = None
    ) -> None:
        super().__init__()
        order = check_ordering(range(dim) if ordering is None else ordering, dim, "NADE ordering")
        self.num_inputs, self.hidden, self.orderings, self.image_shape = dim, hidden, [order], image_shape
        self.register_buffer("order", torch.tensor(order))
        self.register_buffer("inverse", ranks(order))
        self.w = nn.Parameter(torch.randn(hidden, dim) / dim**0.5)
        self.c = nn.Parameter(torch.zeros(hidden))
        self.v = nn.Parameter(torch.randn(dim, hidden) / hidden**0.5)
        self.b = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xo = x[:, self.order]
        contrib = xo[:, :, None] * self.w[:, self.order].T[None]  # [batch, D, H]
        # sum over j < i in the ordering: shifted, since cumsum - contrib would leak x_i through rounding
        h = torch.sigmoid(self.c + F.pad(torch.cumsum(contrib[:, :-1], 1), (0, 0, 1, 0)))
        logits = (h * self.v[self.order][None]).sum(-1) + self.b[self.order]
        return logits[:, self.inverse]

    def step(self, total: torch.Tensor, x_prev: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logit of the index-th dimension in the ordering [batch], new running sum [batch, H]).

        `total` = W[:, <i] x_<i before the previous dimension, `x_prev` its value (0 at index 0).
        """
        columns = torch.cat([torch.zeros_like(self.w[:, :1]), self.w[:, self.order]], 1)  # column i+1 = dim order[i]
        total = total + x_prev[:, None] * columns.index_select(1, index).T
        dim = self.order.index_select(0, index)
        logit = (torch.sigmoid(self.c + total) * self.v.index_select(0, dim)).sum(-1) + self.b.index_select(0, dim)
        return logit, total


def _made_masks(dim: int, hidden: Sequence[int], ordering: Sequence[int], seed: int, outputs: int) -> list[torch.Tensor]:
    """Connectivity masks of Germain et al. 2015 for one ordering and one draw of hidden degrees."""
    gen = torch.Generator().manual_seed(seed)
    degrees = [ranks(ordering) + 1]  # input degrees 1..D; hidden degrees in [min of the layer below, D - 1]
    for h in hidden:
        degrees.append(torch.randint(int(degrees[-1].min()), dim, (h,), generator=gen))
    masks = [(d_out[:, None] >= d_in[None, :]) for d_in, d_out in pairwise(degrees)]
    out = (degrees[0][:, None] > degrees[-1][None, :]).repeat(outputs, 1)  # [outputs * D, H]
    return [m.float() for m in (*masks, out)]


class MADE(nn.Module):
    """MADE: an MLP with masked layers so output i sees only inputs before i in its ordering.

    Several (ordering, connectivity) mask sets can be kept for an order-agnostic ensemble;
    `select_mask(k)` picks the one forward uses. Bernoulli output: logits [batch, D];
    Gaussian output: (mu, log_std), each [batch, D].
    """

    def __init__(
        self,
        dim: int = 64,
        hidden: Sequence[int] = (256, 256),
        distribution: str = "bernoulli",
        orderings: Sequence[Sequence[int]] | None = None,
        num_masks: int = 1,
        seed: int = 0,
        image_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if distribution not in ("bernoulli", "gaussian"):
            raise ValueError(f"MADE distribution {distribution!r}: expected 'bernoulli' or 'gaussian'.")
        if orderings is None:  # mask 0 in natural order, the others random (order-agnostic training)
            gen = torch.Generator().manual_seed(seed)
            orderings = [list(range(dim))] + [torch.randperm(dim, generator=gen).tolist() for _ in range(num_masks - 1)]
        self.orderings = [check_ordering(o, dim, f"MADE ordering {k}") for k, o in enumerate(orderings)]
        self.num_inputs, self.distribution, self.num_masks = dim, distribution, len(self.orderings)
        self.image_shape = image_shape
        outputs = 2 if distribution == "gaussian" else 1
        sets = [_made_masks(dim, hidden, o, seed + 1 + k, outputs) for k, o in enumerate(self.orderings)]
        sizes = [dim, *hidden, outputs * dim]
        self.layers = nn.ModuleList(MaskedLinear(a, b, sets[0][i]) for i, (a, b) in enumerate(pairwise(sizes)))
        for i, layer in enumerate(self.layers):
            layer.register_buffer("masks", torch.stack([s[i] for s in sets]))
        self.selected = 0

    def select_mask(self, k: int) -> None:
        """Use mask set `k` (its ordering is orderings[k]) in forward."""
        for layer in self.layers:
            layer.mask.copy_(layer.masks[k])
        self.selected = k

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        h = x
        for layer in self.layers[:-1]:
            h = F.relu(layer(h))
        out = self.layers[-1](h)
        if self.distribution == "gaussian":
            mu, log_std = out.chunk(2, dim=1)
            return mu, log_std
        return out


class _LevelInput(nn.Module):
    """Integer levels [batch, C, H, W] in 0..L-1 -> floats in [-1, 1]."""

    def __init__(self, levels: int) -> None:
        super().__init__()
        self.levels = levels

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image.float() * (2.0 / (self.levels - 1)) - 1.0


def _to_logits(out: torch.Tensor, colours: int, levels: int) -> torch.Tensor:
    """[batch, C*L, H, W] (colour-major) -> [batch, L, C, H, W]."""
    b, _, h, w = out.shape
    return out.reshape(b, colours, levels, h, w).transpose(1, 2)


class PixelCNN(nn.Module):
    """PixelCNN (van den Oord et al. 2016a): a mask-A 7x7 convolution then residual mask-B layers.

    Colour images use the R->G->B channel ordering inside each pixel. Has the known blind spot
    above-right of each pixel, which GatedPixelCNN removes. Output: logits [batch, L, C, H, W].
    """

    def __init__(self, channels: int = 1, size: int = 8, levels: int = 4, hidden: int = 48, layers: int = 4) -> None:
        super().__init__()
        self.input_shape, self.levels, self.num_classes = (channels, size, size), levels, 0
        h = hidden - hidden % channels
        self.prep = _LevelInput(levels)
        self.first = MaskedConv2d(channels, h, (7, 7), pixel_mask(channels, h, 7, channels, "A", True), (3, 3))
        self.blocks = nn.ModuleList(MaskedConv2d(h, h, (3, 3), pixel_mask(h, h, 3, channels, "B"), (1, 1)) for _ in range(layers))
        self.head = MaskedConv2d(h, h, (1, 1), pixel_mask(h, h, 1, channels, "B"), (0, 0))
        out = channels * levels
        mask = centre_mask(torch.arange(out) // levels, channel_groups(h, channels), True)[:, :, None, None]
        self.out = MaskedConv2d(h, out, (1, 1), mask, (0, 0))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.first(self.prep(image))
        for block in self.blocks:
            x = x + block(F.relu(x))
        return _to_logits(self.out(F.relu(self.head(F.relu(x)))), self.input_shape[0], self.levels)


def _shift_down(x: torch.Tensor) -> torch.Tensor:
    """Move feature maps down one row (zeros in row 0): row r then only holds rows < r."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def _gate(x: torch.Tensor) -> torch.Tensor:
    """tanh(first half of the channels) * sigmoid(second half)."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """One gated PixelCNN layer (van den Oord et al. 2016b): vertical and horizontal stacks, no blind spot.

    The vertical stack sees rows up to the current one; it reaches the horizontal stack shifted
    down a row. The horizontal stack sees pixels to the left; its current-pixel tap is masked
    by colour (mask A in the first layer, B after). tanh * sigmoid gates with a class bias.
    """

    def __init__(self, cin: int, h: int, k: int, colours: int, first: bool, num_classes: int) -> None:
        super().__init__()
        self.k, self.first = k, first
        self.vertical = nn.Conv2d(cin, 2 * h, (k // 2 + 1, k), padding=(k // 2, k // 2))
        tap = torch.ones(2 * h, cin, 1, k // 2 + 1)
        in_groups = torch.arange(cin) if first else channel_groups(cin, colours)
        tap[:, :, 0, -1] = centre_mask(channel_groups(2 * h, colours, 2), in_groups, not first)
        self.horizontal = MaskedConv2d(cin, 2 * h, (1, k // 2 + 1), tap, (0, k // 2))
        self.link = nn.Conv2d(2 * h, 2 * h, 1)
        groups = channel_groups(h, colours)
        self.residual = MaskedConv2d(h, h, (1, 1), centre_mask(groups, groups, True)[:, :, None, None], (0, 0))
        self.label = nn.Embedding(num_classes, 4 * h) if num_classes else None

    def forward(self, v: torch.Tensor, h: torch.Tensor, label: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = v.shape[-2:]
        vf = self.vertical(v)[:, :, :height]  # rows r - k//2 .. r
        hf = self.horizontal(h)[:, :, :, :width] + self.link(_shift_down(vf))  # columns c - k//2 .. c
        if self.label is not None:
            bias_v, bias_h = self.label(label)[:, :, None, None].chunk(2, dim=1)
            vf, hf = vf + bias_v, hf + bias_h
        h_out = self.residual(_gate(hf))
        return _gate(vf), h_out if self.first else h + h_out


class GatedPixelCNN(nn.Module):
    """Gated PixelCNN with vertical/horizontal stacks and optional class conditioning.

    forward(image int [batch, C, H, W] in 0..L-1[, label int [batch]]) -> logits [batch, L, C, H, W].
    """

    def __init__(
        self, channels: int = 1, size: int = 8, levels: int = 4, hidden: int = 48, layers: int = 5, num_classes: int = 0
    ) -> None:
        super().__init__()
        self.input_shape, self.levels, self.num_classes = (channels, size, size), levels, num_classes
        h = hidden - hidden % channels
        self.prep = _LevelInput(levels)
        self.layers = nn.ModuleList(
            GatedLayer(channels if i == 0 else h, h, 5 if i == 0 else 3, channels, i == 0, num_classes) for i in range(layers)
        )
        groups = channel_groups(h, channels)
        self.head = MaskedConv2d(h, h, (1, 1), centre_mask(groups, groups, True)[:, :, None, None], (0, 0))
        out = channels * levels
        self.out = MaskedConv2d(h, out, (1, 1), centre_mask(torch.arange(out) // levels, groups, True)[:, :, None, None], (0, 0))

    def forward(self, image: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        v = h = self.prep(image)
        for layer in self.layers:
            v, h = layer(v, h, label)
        return _to_logits(self.out(F.relu(self.head(F.relu(h)))), self.input_shape[0], self.levels)


def mu_law_encode(audio: np.ndarray, levels: int) -> np.ndarray:
    """Samples in [-1, 1] -> integer codes 0..levels-1 (mu-law companding, mu = levels - 1)."""
    mu = levels - 1
    y = np.sign(audio) * np.log1p(mu * np.abs(np.clip(audio, -1, 1))) / np.log1p(mu)
    return np.clip(np.round((y + 1) / 2 * mu), 0, mu).astype(np.int64)


class WaveNet(nn.Module):
    """WaveNet (van den Oord et al. 2016c): gated dilated causal convolutions over mu-law codes.

    forward(audio int [batch, T][, label]) -> logits [batch, levels, T], where position t is
    p(x_t | x_<t): the input is shifted right by one, filling with `start` (mu-law silence).
    `step` is fast generation (Paine et al. 2016): one new sample through every layer, with each
    layer's last `dilation` inputs kept in a queue [batch, residual, dilation] passed in and out.
    """

    def __init__(
        self,
        levels: int = 256,
        residual: int = 32,
        skip: int = 64,
        dilations: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128),
        num_classes: int = 0,
        sample_rate: int = 8000,
    ) -> None:
        super().__init__()
        self.levels, self.dilations, self.num_classes, self.sample_rate = levels, list(dilations), num_classes, sample_rate
        self.residual_channels, self.start = residual, levels // 2
        self.receptive_field = 1 + sum(self.dilations)  # past samples the output at t can see
        self.embed = nn.Embedding(levels, residual)
        self.convs = nn.ModuleList(nn.Conv1d(residual, 2 * residual, 2) for _ in dilations)  # taps at t - d and t
        self.res = nn.ModuleList(nn.Conv1d(residual, residual, 1) for _ in dilations)
        self.skips = nn.ModuleList(nn.Conv1d(residual, skip, 1) for _ in dilations)
        self.cond = nn.Embedding(num_classes, 2 * residual * len(dilations)) if num_classes else None
        self.head = nn.Sequential(nn.ReLU(), nn.Conv1d(skip, skip, 1), nn.ReLU(), nn.Conv1d(skip, levels, 1))

    def _biases(self, label: torch.Tensor | None) -> list[torch.Tensor | None]:
        if self.cond is None:
            return [None] * len(self.dilations)
        return list(self.cond(label)[:, :, None].chunk(len(self.dilations), dim=1))

    def _layer(self, i: int, z: torch.Tensor, bias: torch.Tensor | None, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gate, residual and skip of layer i given its dilated-conv output z."""
        if bias is not None:
            z = z + bias
        g = _gate(z)
        return h + self.res[i](g), self.skips[i](g)

    def forward(self, audio: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        prev = torch.cat([torch.full_like(audio[:, :1], self.start), audio[:, :-1]], 1)
        h = self.embed(prev).transpose(1, 2)
        total = torch.zeros(())
        for i, (d, bias) in enumerate(zip(self.dilations, self._biases(label))):
            z = F.conv1d(F.pad(h, (d, 0)), self.convs[i].weight, self.convs[i].bias, dilation=d)
            h, s = self._layer(i, z, bias, h)
            total = total + s
        return self.head(total)

    def step(
        self, sample: torch.Tensor, label: torch.Tensor | None, queues: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(logits [batch, levels] of the next sample, updated queues) given the previous sample [batch]."""
        h = self.embed(sample)[:, :, None]
        total = torch.zeros(())
        present = []
        for i, (queue, bias) in enumerate(zip(queues, self._biases(label))):
            z = F.conv1d(torch.cat([queue[:, :, :1], h], 2), self.convs[i].weight, self.convs[i].bias)
            present.append(torch.cat([queue[:, :, 1:], h], 2))
            h, s = self._layer(i, z, bias, h)
            total = total + s
        return self.head(total)[:, :, 0], present
