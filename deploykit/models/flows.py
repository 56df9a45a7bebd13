"""Normalizing flows of the zoo: NICE, RealNVP, Glow, MAF and IAF, built from deploykit.nn.flows."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..nn.flows import (
    ActNorm,
    AutoregressiveAffine,
    Chain,
    Coupling,
    Flow,
    InvConv1x1,
    Logit,
    MultiScale,
    Scaling,
    SplitPrior,
    Squeeze,
    conv_net,
)
from .autoregressive import MADE


def mlp(dim: int, out: int, hidden: int) -> nn.Sequential:
    """Coupling network for vectors; the last layer starts at zero so the flow starts as the identity."""
    net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out))
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


class NICE(Flow):
    """NICE (Dinh et al. 2015): additive couplings over alternating halves, then a diagonal scaling."""

    def __init__(self, dim: int = 2, hidden: int = 64, couplings: int = 4) -> None:
        layers = [Coupling(mlp(dim, dim, hidden), "alternate", i % 2, affine=False) for i in range(couplings)]
        super().__init__(Chain(*layers, Scaling(dim)), (dim,))


class RealNVP(Flow):
    """RealNVP (Dinh et al. 2017) on vectors: affine couplings over alternating halves."""

    def __init__(self, dim: int = 2, hidden: int = 64, couplings: int = 6) -> None:
        layers = [Coupling(mlp(dim, 2 * dim, hidden), "alternate", i % 2, affine=True) for i in range(couplings)]
        super().__init__(Chain(*layers), (dim,))


def _affine(channels: int, hidden: int, mask: str, parity: int) -> Coupling:
    return Coupling(conv_net(channels, 2 * channels, hidden), mask, parity, affine=True)


class RealNVPImage(Flow):
    """Multi-scale RealNVP on images: logit preprocessing, 3 checkerboard couplings, squeeze, 3 channel
    couplings, half factored out, 4 checkerboard couplings on the rest. H and W must be even."""

    def __init__(self, channels: int = 1, size: int = 8, hidden: int = 32, levels: int = 17) -> None:
        c4 = 4 * channels
        steps = Chain(*(_affine(channels, hidden, "checkerboard", i % 2) for i in range(3)), Squeeze(),
                      *(_affine(c4, hidden, "channel", i % 2) for i in range(3)))
        inner = Chain(*(_affine(c4 // 2, hidden, "checkerboard", i % 2) for i in range(4)))
        super().__init__(Chain(Logit(), MultiScale(steps, inner)), (channels, size, size), squeeze_factor=2, levels=levels)


def glow_step(channels: int, hidden: int, lu: bool) -> Chain:
    """One step of Glow: actnorm, invertible 1x1 convolution, affine coupling on half the channels."""
    return Chain(ActNorm(channels), InvConv1x1(channels, lu), _affine(channels, hidden, "channel", 0))


class Glow(Flow):
    """Glow (Kingma & Dhariwal 2018) with two scales: squeeze, K steps, split with a learned prior;
    squeeze, K steps on the kept half. H and W must be multiples of 4. After building, call
    `reset_actnorm()` and run one batch for the data-dependent actnorm initialisation."""

    def __init__(self, channels: int = 1, size: int = 8, hidden: int = 32, steps: int = 4, lu: bool = True, levels: int = 17) -> None:
        c4 = 4 * channels
        outer = Chain(Squeeze(), *(glow_step(c4, hidden, lu) for _ in range(steps)))
        inner = Chain(Squeeze(), *(glow_step(2 * c4, hidden, lu) for _ in range(steps)), Squeeze(undo=True))
        split = MultiScale(outer, inner, SplitPrior(c4 - c4 // 2, c4 // 2, hidden))
        super().__init__(Chain(Logit(), split), (channels, size, size), squeeze_factor=4, levels=levels)

    def reset_actnorm(self) -> None:
        """Re-initialise every actnorm from the next batch seen."""
        for m in self.modules():
            if isinstance(m, ActNorm):
                m.reset()


class MAF(Flow):
    """A stack of MAF layers (IAF with inverse_autoregressive=True), orderings alternating natural/reversed."""

    def __init__(self, dim: int = 2, hidden: Sequence[int] = (64, 64), layers: int = 5, inverse_autoregressive: bool = False) -> None:
        natural = list(range(dim))
        blocks = [AutoregressiveAffine(MADE(dim, hidden, "gaussian", [natural if k % 2 == 0 else natural[::-1]], seed=k),
                                       inverse_autoregressive) for k in range(layers)]
        super().__init__(Chain(*blocks), (dim,))
        for block in blocks:  # start near the identity
            nn.init.zeros_(block.made.layers[-1].weight)
            nn.init.zeros_(block.made.layers[-1].bias)

    @property
    def layers(self) -> list[AutoregressiveAffine]:
        """The autoregressive layers, in the data -> latent order."""
        return list(self.transform.transforms)
