"""Training loops for the masked autoregressive zoo: maximum likelihood, test NLL in nats."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .autoregressive import mu_law_encode
from .data import binarized_digits, level_digits, load_digits, tone_clips
from .train import OnStep, _fit


def _bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood per example [batch], nats."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)


def train_binary(model: nn.Module, steps: int, on_step: OnStep, lr: float = 3e-3) -> dict[str, float]:
    """FVSBN, NADE or MADE on binarized digits; MADE ensembles train each batch with the next mask set
    (order-agnostic training) and are scored by averaging p(x) over the set. Returns test NLL (nats/image)."""
    train, test = (torch.from_numpy(a) for a in binarized_digits(load_digits()))
    masks = int(getattr(model, "num_masks", 1))
    calls = [0]

    def loss(i: torch.Tensor) -> torch.Tensor:
        if masks > 1:
            model.select_mask(calls[0] % masks)
            calls[0] += 1
        return _bernoulli_nll(model(train[i]), train[i]).mean()

    _fit(model, loss, len(train), steps, on_step, lr=lr)
    with torch.no_grad():
        per_mask = []
        for k in range(masks):
            if masks > 1:
                model.select_mask(k)
            per_mask.append(-_bernoulli_nll(model(test), test))
        if masks > 1:
            model.select_mask(0)
        ensemble = torch.logsumexp(torch.stack(per_mask), 0) - torch.log(torch.tensor(float(masks)))
    metrics = {"test_nll_nats": float(-ensemble.mean())}
    return metrics | ({"test_nll_nats_ordering0": float(-per_mask[0].mean())} if masks > 1 else {})


def _categorical_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """NLL per example [batch] of integer x [batch, *event] under logits [batch, L, *event], nats."""
    return F.cross_entropy(logits, x, reduction="none").flatten(1).sum(1)


def train_pixelcnn(model: nn.Module, steps: int, on_step: OnStep) -> dict[str, float]:
    """A (class-conditional) PixelCNN on digits quantized to `model.levels` levels; test NLL nats/image and bits/dim."""
    data = load_digits()
    x, y = torch.from_numpy(level_digits(data.x_train, model.levels)), torch.from_numpy(data.y_train)
    labels = (lambda i: (y[i],)) if model.num_classes else (lambda i: ())
    _fit(model, lambda i: _categorical_nll(model(x[i], *labels(i)), x[i]).mean(), len(x), steps, on_step)
    xt, yt = torch.from_numpy(level_digits(data.x_test, model.levels)), torch.from_numpy(data.y_test)
    with torch.no_grad():
        nll = float(_categorical_nll(model(xt, *((yt,) if model.num_classes else ())), xt).mean())
    return {"test_nll_nats": nll, "test_bits_per_dim": nll / (xt[0].numel() * float(torch.log(torch.tensor(2.0))))}


def train_wavenet(model: nn.Module, steps: int, on_step: OnStep, length: int = 768) -> dict[str, float]:
    """WaveNet on mu-law tone mixtures at 8 kHz, conditioned on the number of tones; test NLL nats/sample."""
    audio, kind = tone_clips(2048, length, seed=0, sample_rate=model.sample_rate)
    codes, kind = torch.from_numpy(mu_law_encode(audio, model.levels)), torch.from_numpy(kind)
    labels = (lambda i: (kind[i],)) if model.num_classes else (lambda i: ())
    _fit(model, lambda i: F.cross_entropy(model(codes[i], *labels(i)), codes[i]), len(codes), steps, on_step, batch=16)
    test_audio, test_kind = tone_clips(64, length, seed=1, sample_rate=model.sample_rate)
    test = torch.from_numpy(mu_law_encode(test_audio, model.levels))
    with torch.no_grad():
        logits = model(test, *((torch.from_numpy(test_kind),) if model.num_classes else ()))
        nll = float(F.cross_entropy(logits, test))
    return {"test_nll_nats_per_sample": nll}
