"""Flow transforms and their protocol, shared by the zoo, the flow exporters and users' own flows.

Every transform returns `(outputs, logabsdet)` in both directions (the nflows convention):
forward maps data x to latents z of the same shape, inverse maps z back, and logabsdet [batch]
is log|det J| of the direction taken. A flow's density is log N(z; 0, I) + logabsdet.
Glow's 1x1 convolutions use slogdet and inverse, which ONNX lacks; the exporter folds them into
constants. MAF sampling and IAF density need one MADE pass per dimension; here that is a Python
loop (the torch reference), the exporter also builds it as an in-graph scan.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .density import HALF_LOG_2PI
from .masked import check_ordering

Result = tuple[torch.Tensor, torch.Tensor]  # (outputs, logabsdet [batch])


def flat_sum(v: torch.Tensor) -> torch.Tensor:
    """Sum over every axis but the batch axis."""
    return v.flatten(1).sum(1)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) per example [batch]."""
    return flat_sum(-0.5 * z * z - HALF_LOG_2PI)


def _zeros(x: torch.Tensor) -> torch.Tensor:
    return x.new_zeros(x.shape[0])


class Chain(nn.Module):
    """Transforms applied in order (forward) or in reverse order (inverse); log-determinants add up."""

    def __init__(self, *transforms: nn.Module) -> None:
        super().__init__()
        self.transforms = nn.ModuleList(transforms)

    def forward(self, x: torch.Tensor) -> Result:
        total = _zeros(x)
        for t in self.transforms:
            x, logdet = t(x)
            total = total + logdet
        return x, total

    def inverse(self, z: torch.Tensor) -> Result:
        total = _zeros(z)
        for t in reversed(self.transforms):
            z, logdet = t.inverse(z)
            total = total + logdet
        return z, total


def coupling_mask(x: torch.Tensor, kind: str, parity: int) -> torch.Tensor:
    """The 0/1 mask of the conditioning half, broadcastable to x: 'alternate' features of [batch, D],
    a 'checkerboard' over height and width, or the first/second half of the 'channel's."""
    if kind == "alternate":
        keep = torch.arange(x.shape[1], device=x.device) % 2 == parity
        return keep.to(x.dtype).view(1, -1)
    if kind == "checkerboard":
        rows = torch.arange(x.shape[2], device=x.device)[:, None]
        cols = torch.arange(x.shape[3], device=x.device)[None, :]
        return ((rows + cols) % 2 == parity).to(x.dtype)[None, None]
    half = torch.arange(x.shape[1], device=x.device) < x.shape[1] // 2
    return (half if parity == 0 else ~half).to(x.dtype).view(1, -1, 1, 1)


class Coupling(nn.Module):
    """Masked coupling layer (Dinh et al. 2015, 2017): y = m x + (1 - m)(x exp(s(m x)) + t(m x)).

    `net` maps the masked input to t (additive, NICE) or to (s, t) stacked on axis 1 (affine,
    RealNVP and Glow); s is tanh-bounded with a learned scale.
    """

    MASKS = ("alternate", "checkerboard", "channel")

    def __init__(self, net: nn.Module, mask: str, parity: int, affine: bool) -> None:
        super().__init__()
        if mask not in self.MASKS:
            raise ValueError(f"coupling mask {mask!r}: expected one of {self.MASKS}.")
        self.net, self.mask, self.parity, self.affine = net, mask, parity, affine
        self.scale = nn.Parameter(torch.ones(1))

    def _shift_log_scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        m = coupling_mask(x, self.mask, self.parity)
        out = self.net(x * m)
        if not self.affine:
            return out * (1 - m), None
        raw, shift = out.chunk(2, dim=1)
        return shift * (1 - m), torch.tanh(raw) * self.scale * (1 - m)

    def forward(self, x: torch.Tensor) -> Result:
        shift, log_scale = self._shift_log_scale(x)
        if log_scale is None:
            return x + shift, _zeros(x)
        return x * torch.exp(log_scale) + shift, flat_sum(log_scale)

    def inverse(self, y: torch.Tensor) -> Result:
        shift, log_scale = self._shift_log_scale(y)  # m * y == m * x: the conditioning half passes unchanged
        if log_scale is None:
            return y - shift, _zeros(y)
        return (y - shift) * torch.exp(-log_scale), -flat_sum(log_scale)


class Scaling(nn.Module):
    """NICE's diagonal scaling layer y = x exp(s), s learned per feature."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> Result:
        return x * torch.exp(self.log_scale), self.log_scale.sum().expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> Result:
        return y * torch.exp(-self.log_scale), -self.log_scale.sum().expand(y.shape[0])


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """H * W of an image batch as a [batch] float tensor (per-pixel log-determinants scale by it)."""
    return x.new_ones(x.shape[0]) * (x.shape[2] * x.shape[3])


class ActNorm(nn.Module):
    """Per-channel affine y = (x + bias) exp(log_scale) (Kingma & Dhariwal 2018).

    Data-dependent initialisation: after `reset()`, the next forward sets bias and scale so that
    batch's output has zero mean and unit variance per channel.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.pending = False

    def reset(self) -> None:
        """Initialise from the next batch seen."""
        self.pending = True

    def forward(self, x: torch.Tensor) -> Result:
        if self.pending:
            with torch.no_grad():
                self.bias.copy_(-x.mean((0, 2, 3), keepdim=True))
                self.log_scale.copy_(-torch.log(x.std((0, 2, 3), keepdim=True) + 1e-6))
            self.pending = False
        return (x + self.bias) * torch.exp(self.log_scale), self.log_scale.sum() * _pixels(x)

    def inverse(self, y: torch.Tensor) -> Result:
        return y * torch.exp(-self.log_scale) - self.bias, -self.log_scale.sum() * _pixels(y)


def conv1x1(x: torch.Tensor, weight: torch.Tensor, log_abs_det: torch.Tensor) -> Result:
    """y = W x at every pixel, with log|det| = H * W * log|det W|."""
    return F.conv2d(x, weight[:, :, None, None]), log_abs_det * _pixels(x)


class InvConv1x1(nn.Module):
    """Invertible 1x1 convolution (Kingma & Dhariwal 2018), W initialised to a random rotation.

    lu=True parametrizes W = P L (U + diag(sign exp(log_s))) so log|det W| = sum(log_s); either way
    the inverse direction needs W^-1, which the exporter computes once (`invertible_weight`).
    """

    no_prune = True  # a zero in W (not in its LU factors' off-diagonals) can make it singular: pruning skips it

    def __init__(self, channels: int, lu: bool) -> None:
        super().__init__()
        w = torch.linalg.qr(torch.randn(channels, channels))[0]
        self.lu = lu
        if not lu:
            self.weight = nn.Parameter(w)
            return
        p, lower, upper = torch.linalg.lu(w)
        diag = torch.diagonal(upper)
        self.register_buffer("permutation", p)
        self.register_buffer("sign", torch.sign(diag))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(diag.abs()))

    def invertible_weight(self) -> torch.Tensor:
        """W [C, C]."""
        if not self.lu:
            return self.weight
        eye = torch.eye(len(self.sign), device=self.sign.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign * torch.exp(self.log_s))
        return self.permutation @ lower @ upper

    def log_abs_det(self) -> torch.Tensor:
        """log|det W|."""
        return self.log_s.sum() if self.lu else torch.linalg.slogdet(self.weight)[1]

    def forward(self, x: torch.Tensor) -> Result:
        return conv1x1(x, self.invertible_weight(), self.log_abs_det())

    def inverse(self, y: torch.Tensor) -> Result:
        return conv1x1(y, torch.linalg.inv(self.invertible_weight()), -self.log_abs_det())


def squeeze2(x: torch.Tensor) -> torch.Tensor:
    """Space to depth: [B, C, H, W] -> [B, 4C, H/2, W/2]."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)


def unsqueeze2(x: torch.Tensor) -> torch.Tensor:
    """Depth to space: [B, 4C, H, W] -> [B, C, 2H, 2W]."""
    b, c, h, w = x.shape
    return x.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, h * 2, w * 2)


class Squeeze(nn.Module):
    """Squeeze (or, with undo=True, unsqueeze) by a factor of 2; volume preserving."""

    def __init__(self, undo: bool = False) -> None:
        super().__init__()
        self.undo = undo

    def forward(self, x: torch.Tensor) -> Result:
        return (unsqueeze2(x) if self.undo else squeeze2(x)), _zeros(x)

    def inverse(self, y: torch.Tensor) -> Result:
        return (squeeze2(y) if self.undo else unsqueeze2(y)), _zeros(y)


def conv_net(cin: int, cout: int, hidden: int) -> nn.Sequential:
    """Coupling network for images (3x3, 1x1, 3x3 convolutions); the last starts at zero."""
    net = nn.Sequential(nn.Conv2d(cin, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, hidden, 1), nn.ReLU(),
                        nn.Conv2d(hidden, cout, 3, padding=1))
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


class SplitPrior(nn.Module):
    """Glow's learned prior for factored-out channels a given the kept ones b: a -> (a - mu(b)) exp(-log_std(b))."""

    def __init__(self, kept: int, out: int, hidden: int) -> None:
        super().__init__()
        self.net = conv_net(kept, 2 * out, hidden)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> Result:
        mu, log_std = self.net(b).chunk(2, dim=1)
        return (a - mu) * torch.exp(-log_std), -flat_sum(log_std)

    def inverse(self, e: torch.Tensor, b: torch.Tensor) -> Result:
        mu, log_std = self.net(b).chunk(2, dim=1)
        return e * torch.exp(log_std) + mu, flat_sum(log_std)


class MultiScale(nn.Module):
    """One scale of a multi-scale flow (Dinh et al. 2017): `steps` (which squeeze once), then half the
    channels are factored out (through Glow's learned `prior`, if given) while `inner` transforms the
    other half; the result is unsqueezed, so z keeps x's shape."""

    def __init__(self, steps: Chain, inner: nn.Module, prior: SplitPrior | None = None) -> None:
        super().__init__()
        self.steps, self.inner, self.prior = steps, inner, prior

    def forward(self, x: torch.Tensor) -> Result:
        h, logdet = self.steps(x)
        out, kept = h.chunk(2, dim=1)
        z_kept, inner_logdet = self.inner(kept)
        if self.prior is not None:
            out, prior_logdet = self.prior(out, kept)
            logdet = logdet + prior_logdet
        return unsqueeze2(torch.cat([out, z_kept], 1)), logdet + inner_logdet

    def inverse(self, z: torch.Tensor) -> Result:
        out, z_kept = squeeze2(z).chunk(2, dim=1)
        kept, logdet = self.inner.inverse(z_kept)
        if self.prior is not None:
            out, prior_logdet = self.prior.inverse(out, kept)
            logdet = logdet + prior_logdet
        x, steps_logdet = self.steps.inverse(torch.cat([out, kept], 1))
        return x, logdet + steps_logdet


class Logit(nn.Module):
    """Data in (0, 1) -> logit(alpha + (1 - 2 alpha) x), the dequantized-image preprocessing of RealNVP."""

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> Result:
        s = self.alpha + (1 - 2 * self.alpha) * x
        y = torch.log(s) - torch.log1p(-s)
        return y, flat_sum(math.log(1 - 2 * self.alpha) - torch.log(s) - torch.log1p(-s))

    def inverse(self, y: torch.Tensor) -> Result:
        x = (torch.sigmoid(y) - self.alpha) / (1 - 2 * self.alpha)
        return x, flat_sum(-F.softplus(-y) - F.softplus(y) - math.log(1 - 2 * self.alpha))


class Flow(nn.Module):
    """A normalizing flow with a standard normal base; `transform` maps data x to z of x's shape.

    `event_shape` is the trained shape ([D] or [C, H, W]); image flows take any H, W that are
    multiples of `squeeze_factor`. `levels` > 0 marks discrete data with that many levels, modelled
    by uniform dequantization: the flow sees (pixel + u) / levels.
    """

    def __init__(self, transform: nn.Module, event_shape: Sequence[int], squeeze_factor: int = 1, levels: int = 0) -> None:
        super().__init__()
        self.transform = transform
        self.event_shape = tuple(int(d) for d in event_shape)
        self.squeeze_factor, self.levels = squeeze_factor, levels

    def forward(self, x: torch.Tensor) -> Result:
        return self.transform(x)

    def inverse(self, z: torch.Tensor) -> Result:
        return self.transform.inverse(z)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) per example [batch], nats."""
        z, logdet = self(x)
        return standard_normal_log_prob(z) + logdet


class AutoregressiveAffine(nn.Module):
    """An affine autoregressive layer over a Gaussian MADE with one ordering (made(x) -> mu, alpha = log_std).

    MAF (Papamakarios et al. 2017): z = (x - mu(x)) exp(-alpha(x)); density is one pass, sampling D.
    IAF (Kingma et al. 2016): x = z exp(alpha(z)) + mu(z); sampling is one pass, density D.
    The slow direction fills one dimension per pass, in the MADE's ordering (`candidate`). alpha is
    soft-bounded to +-max_log_scale, so neither direction can blow up off the data.
    """

    def __init__(self, made: nn.Module, inverse_autoregressive: bool, max_log_scale: float = 6.0) -> None:
        super().__init__()
        if made.distribution != "gaussian" or made.num_masks != 1:
            raise ValueError("an autoregressive flow layer needs a Gaussian MADE with one ordering.")
        self.made, self.inverse_autoregressive, self.max_log_scale = made, inverse_autoregressive, max_log_scale
        self.ordering = check_ordering(made.orderings[0], made.num_inputs, "layer ordering")

    def _shift_log_scale(self, conditioner: torch.Tensor) -> Result:
        mu, raw = self.made(conditioner)
        return mu, self.max_log_scale * torch.tanh(raw / self.max_log_scale)

    def _to_data(self, z: torch.Tensor, conditioner: torch.Tensor) -> Result:
        mu, log_std = self._shift_log_scale(conditioner)
        return z * torch.exp(log_std) + mu, flat_sum(log_std)

    def _to_latent(self, x: torch.Tensor, conditioner: torch.Tensor) -> Result:
        mu, log_std = self._shift_log_scale(conditioner)
        return (x - mu) * torch.exp(-log_std), -flat_sum(log_std)

    def candidate(self, partial: torch.Tensor, given: torch.Tensor) -> Result:
        """One pass of the slow direction: every output computed from `partial`, the outputs filled so far.
        Output i is exact once the dimensions before i in the ordering are; logabsdet once all are."""
        return (self._to_latent if self.inverse_autoregressive else self._to_data)(given, partial)

    def sequential(self, given: torch.Tensor) -> Result:
        """The slow direction: D passes, filling one dimension each."""
        out, logdet = torch.zeros_like(given), _zeros(given)
        for i in self.ordering:
            value, logdet = self.candidate(out, given)
            out = out.clone()
            out[:, i] = value[:, i]
        return out, logdet

    def forward(self, x: torch.Tensor) -> Result:
        return self.sequential(x) if self.inverse_autoregressive else self._to_latent(x, x)

    def inverse(self, z: torch.Tensor) -> Result:
        return self._to_data(z, z) if self.inverse_autoregressive else self.sequential(z)
