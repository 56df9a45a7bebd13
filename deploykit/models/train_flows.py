"""Training loops for the flow zoo: maximum likelihood on 2-D toy sets and dequantized digits."""

from __future__ import annotations

import torch
from torch import nn

from ..nn.density import bits_from_log_prob
from .data import level_digits, load_digits, toy_2d
from .train import OnStep, _fit


def train_toy_flow(model: nn.Module, data: str, steps: int, on_step: OnStep, lr: float = 3e-3) -> dict[str, float]:
    """A 2-D flow on `data` ('moons' or 'rings'); returns the test NLL in nats per point."""
    train, test = torch.from_numpy(toy_2d(data, 4000, seed=0)), torch.from_numpy(toy_2d(data, 1000, seed=1))
    _fit(model, lambda i: -model.log_prob(train[i]).mean(), len(train), steps, on_step, lr=lr, batch=256)
    with torch.no_grad():
        return {"test_nll_nats": float(-model.log_prob(test).mean())}


def dequantized(pixels: torch.Tensor, levels: int, gen: torch.Generator) -> torch.Tensor:
    """(pixels + u) / levels with u ~ U[0, 1)."""
    return (pixels + torch.rand(pixels.shape, generator=gen)) / levels


def train_image_flow(model: nn.Module, steps: int, on_step: OnStep, lr: float = 2e-3) -> dict[str, float]:
    """An image flow on digits quantized to `model.levels` levels and dequantized with fresh noise each batch;
    Glow's actnorms are first initialised from one batch. Returns test bits/dim (one dequantization draw)."""
    data, levels = load_digits(), model.levels
    pixels = torch.from_numpy(level_digits(data.x_train, levels))
    gen = torch.Generator().manual_seed(1)
    if hasattr(model, "reset_actnorm"):
        model.reset_actnorm()
        with torch.no_grad():
            model(dequantized(pixels[:512], levels, gen))
    _fit(model, lambda i: -model.log_prob(dequantized(pixels[i], levels, gen)).mean(), len(pixels), steps, on_step, lr=lr)
    test = torch.from_numpy(level_digits(data.x_test, levels))
    with torch.no_grad():
        log_prob = model.log_prob(dequantized(test, levels, torch.Generator().manual_seed(2))).double().numpy()
    bits = bits_from_log_prob(log_prob, test[0].numel(), levels)
    return {"test_bits_per_dim": float(bits.mean()), "test_nll_nats": float(-log_prob.mean())}
