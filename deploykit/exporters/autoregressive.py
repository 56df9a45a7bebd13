"""Masked autoregressive families: FVSBN, MADE, NADE, PixelCNN and WaveNet.

Every family exports a `conditionals` graph (all p(x_i | x_<i) and log p(x) per example in one
pass); masks are folded into constant weights first. NADE adds a `step` graph for its O(H)
sampling recursion; WaveNet a one-sample `step` graph whose layer queues are explicit state.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ExportError
from ..nn.masked import check_ordering
from ..runtimes.autoregressive import DimensionwiseConfig, NadeConfig, RasterConfig, WavenetConfig
from ..specs import DimRule, TensorSpec
from .feedforward import BATCHES
from .registry import Family, Role, Tolerance, attribute, register

DIMENSIONWISE_PROTOCOL = (
    "`num_inputs` D, `distribution` ('bernoulli' or 'gaussian'), `orderings` (one permutation of 0..D-1 per "
    "mask set); forward(x [batch, D]) -> logits, or (mu, log_std) for gaussian. Ensembles add `select_mask(k)`. "
    "Masked layers are nn.Linear / nn.Conv subclasses with a `mask` buffer multiplied into the weight."
)
NADE_PROTOCOL = (
    "`num_inputs` D, `hidden` H, `orderings` ([one permutation]); forward(x [batch, D]) -> logits; "
    "step(total [batch, H], x_prev [batch], index int64 [1]) -> (logit [batch], new total)."
)
PIXELCNN_PROTOCOL = (
    "`input_shape` = (C, H, W), `levels` L and `num_classes` (0 = unconditional); forward(image int64 "
    "[batch, C, H, W] in 0..L-1[, label int64 [batch]]) -> logits [batch, L, C, H, W], raster order, R->G->B."
)
WAVENET_PROTOCOL = (
    "`levels`, `start`, `dilations`, `residual_channels`, `receptive_field`, `num_classes`, `sample_rate`; "
    "forward(audio int64 [batch, T][, label]) -> logits [batch, levels, T] with position t = p(x_t | x_<t); "
    "step(sample [batch], label or None, queues [batch, residual, d] per layer) -> (logits [batch, levels], queues)."
)


def _plain(layer: nn.Module, mask: torch.Tensor) -> nn.Module:
    """A plain nn.Linear / nn.Conv1d / nn.Conv2d holding weight * mask."""
    if isinstance(layer, nn.Linear):
        plain: nn.Module = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    elif isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        base = nn.Conv2d if isinstance(layer, nn.Conv2d) else nn.Conv1d
        plain = base(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,  # type: ignore[arg-type]
                     layer.dilation, layer.groups, layer.bias is not None, layer.padding_mode)  # type: ignore[arg-type]
    else:
        raise ExportError(f"{type(layer).__name__} has a `mask` but is not an nn.Linear, nn.Conv1d or nn.Conv2d subclass.")
    with torch.no_grad():
        plain.weight.copy_(layer.weight * mask)
        if layer.bias is not None:
            plain.bias.copy_(layer.bias)
    return plain.eval().requires_grad_(False)


def fold_masks(model: nn.Module) -> nn.Module:
    """A copy of `model` where every masked layer is a plain layer whose weight is weight * mask."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            mask = getattr(child, "mask", None)
            if isinstance(mask, torch.Tensor) and mask.shape == getattr(child, "weight", mask[None]).shape:
                setattr(parent, name, _plain(child, mask))
    return model


def log_likelihood(distribution: str, x: torch.Tensor, out: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """log p(x) per example [batch] from the conditionals' parameters."""
    if distribution == "bernoulli":
        (logits,) = out
        return (x * logits - F.softplus(logits)).sum(1)  # = x log s(l) + (1-x) log s(-l); ONNX's LogSigmoid is Log(Sigmoid)
    if distribution == "gaussian":
        mu, log_std = out
        z = (x - mu) * torch.exp(-log_std)
        return (-0.5 * z * z - log_std - 0.5 * math.log(2 * math.pi)).sum(1)
    (logits,) = out  # categorical: logits [batch, L, *event], x int [batch, *event]
    picked = F.log_softmax(logits, 1).gather(1, x.unsqueeze(1)).squeeze(1)
    return picked.flatten(1).sum(1)


class Conditionals(nn.Module):
    """The model's conditional parameters plus log p(x) per example, in one graph."""

    def __init__(self, model: nn.Module, distribution: str) -> None:
        super().__init__()
        self.model, self.distribution = model, distribution

    def forward(self, x: torch.Tensor, *label: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(x, *label)
        params = out if isinstance(out, tuple) else (out,)
        return (*params, log_likelihood(self.distribution, x, params))


def _outputs(distribution: str) -> tuple[str, ...]:
    return ("mu", "log_std", "log_prob") if distribution == "gaussian" else ("logits", "log_prob")


def _orderings(model: nn.Module, size: int, family: str, protocol: str) -> list[list[int]]:
    """The model's orderings, each checked to be a permutation of 0..size-1 (ExportError otherwise)."""
    orderings = attribute(model, "orderings", family, protocol)
    try:
        return [check_ordering(o, size, f"ordering {k} of {type(model).__name__}") for k, o in enumerate(orderings)]
    except ValueError as exc:
        raise ExportError(str(exc)) from exc


def _vector(model: nn.Module, family: str, protocol: str) -> TensorSpec:
    return TensorSpec("x", "float32", ("batch", int(attribute(model, "num_inputs", family, protocol))))


def _dimensionwise_roles(model: nn.Module) -> dict[str, Role]:
    family = "made" if hasattr(model, "select_mask") else "fvsbn"
    distribution = str(attribute(model, "distribution", family, DIMENSIONWISE_PROTOCOL))
    if distribution not in ("bernoulli", "gaussian"):
        raise ExportError(f"{type(model).__name__}.distribution is {distribution!r}; expected 'bernoulli' or 'gaussian'.")
    spec = (_vector(model, family, DIMENSIONWISE_PROTOCOL),)
    outputs = _outputs(distribution)
    if not hasattr(model, "select_mask"):
        return {"conditionals": Role(Conditionals(fold_masks(model), distribution), spec, outputs, {"batch": 2},
                                     reference=Conditionals(model, distribution))}
    roles = {}
    for k in range(len(model.orderings)):
        selected = copy.deepcopy(model)
        selected.select_mask(k)
        roles[f"conditionals.{k}"] = Role(Conditionals(fold_masks(selected), distribution), spec, outputs, {"batch": 2},
                                          reference=Conditionals(selected, distribution))
    return roles


def _dimensionwise_loop(model: nn.Module) -> DimensionwiseConfig:
    size = int(model.num_inputs)
    orderings = _orderings(model, size, "made", DIMENSIONWISE_PROTOCOL)
    roles = [f"conditionals.{k}" for k in range(len(orderings))] if hasattr(model, "select_mask") else ["conditionals"]
    return DimensionwiseConfig(roles=roles, orderings=orderings, distribution=str(model.distribution), num_inputs=size,
                               **_image_shape(model))


def _image_shape(model: nn.Module) -> dict[str, Any]:
    """Optional `image_shape` (C, H, W) so samples of flat models can be written as images."""
    shape = getattr(model, "image_shape", None)
    return {"image_shape": [int(d) for d in shape], "value_range": [0.0, 1.0]} if shape else {}


class NadeStep(nn.Module):
    """NADE's sampling step as a graph: (total, x_prev, index) -> (logit, next_total)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, total: torch.Tensor, x_prev: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.step(total, x_prev, index)


def _nade_roles(model: nn.Module) -> dict[str, Role]:
    size = int(attribute(model, "num_inputs", "nade", NADE_PROTOCOL))
    hidden = int(attribute(model, "hidden", "nade", NADE_PROTOCOL))
    step_inputs = (TensorSpec("total", "float32", ("batch", hidden)), TensorSpec("x_prev", "float32", ("batch",)),
                   TensorSpec("index", "int64", (1,), high=size))
    return {
        "conditionals": Role(Conditionals(model, "bernoulli"), (_vector(model, "nade", NADE_PROTOCOL),), _outputs("bernoulli"), {"batch": 2}),
        "step": Role(NadeStep(model), step_inputs, ("logit", "next_total"), {"batch": 2}),
    }


def _nade_loop(model: nn.Module) -> NadeConfig:
    size = int(model.num_inputs)
    return NadeConfig(roles=["conditionals"], orderings=_orderings(model, size, "nade", NADE_PROTOCOL),
                      distribution="bernoulli", num_inputs=size, hidden=int(model.hidden), **_image_shape(model))


def _label(model: nn.Module, family: str, protocol: str) -> tuple[TensorSpec, ...]:
    classes = int(attribute(model, "num_classes", family, protocol))
    return (TensorSpec("label", "int64", ("batch",), high=classes),) if classes else ()


def _pixelcnn_roles(model: nn.Module) -> dict[str, Role]:
    c, h, w = (int(v) for v in attribute(model, "input_shape", "pixelcnn", PIXELCNN_PROTOCOL))
    levels = int(attribute(model, "levels", "pixelcnn", PIXELCNN_PROTOCOL))
    inputs = (TensorSpec("image", "int64", ("batch", c, h, w), high=levels), *_label(model, "pixelcnn", PIXELCNN_PROTOCOL))
    return {"conditionals": Role(Conditionals(fold_masks(model), "categorical"), inputs, ("logits", "log_prob"), {"batch": 2},
                                 reference=Conditionals(model, "categorical"))}


def _pixelcnn_loop(model: nn.Module) -> RasterConfig:
    return RasterConfig(roles=["conditionals"], input_shape=[int(d) for d in model.input_shape], levels=int(model.levels),
                        num_classes=int(model.num_classes), value_range=[0.0, float(int(model.levels) - 1)])


class WaveNetStep(nn.Module):
    """WaveNet fast generation as a graph: (sample[, label], past_queue.0, ...) -> (logits, present_queue.0, ...)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.conditional = model, bool(model.num_classes)

    def forward(self, sample: torch.Tensor, *rest: torch.Tensor) -> tuple[torch.Tensor, ...]:
        label, queues = (rest[0], rest[1:]) if self.conditional else (None, rest)
        logits, present = self.model.step(sample, label, queues)
        return (logits, *present)


def _wavenet_roles(model: nn.Module) -> dict[str, Role]:
    levels = int(attribute(model, "levels", "wavenet", WAVENET_PROTOCOL))
    channels = int(attribute(model, "residual_channels", "wavenet", WAVENET_PROTOCOL))
    dilations = [int(d) for d in attribute(model, "dilations", "wavenet", WAVENET_PROTOCOL)]
    label = _label(model, "wavenet", WAVENET_PROTOCOL)
    queues = tuple(TensorSpec(f"past_queue.{i}", "float32", ("batch", channels, d)) for i, d in enumerate(dilations))
    audio = TensorSpec("audio", "int64", ("batch", "time"), high=levels)
    return {
        "conditionals": Role(Conditionals(model, "categorical"), (audio, *label), ("logits", "log_prob"),
                             {"batch": 2, "time": 37}, {"time": DimRule(min=1)}),
        "step": Role(WaveNetStep(model), (TensorSpec("sample", "int64", ("batch",), high=levels), *label, *queues),
                     ("logits", *(f"present_queue.{i}" for i in range(len(dilations)))), {"batch": 2}),
    }


def _wavenet_shapes(model: nn.Module) -> list[dict[str, int]]:
    """Batch 1 over one receptive field plus the placeholder, and batch 3 over a short clip."""
    return [{"batch": 1, "time": int(model.receptive_field) + 1}, {"batch": 3, "time": 50}]


def _wavenet_loop(model: nn.Module) -> WavenetConfig:
    return WavenetConfig(roles=["conditionals", "step"], levels=int(model.levels), start=int(model.start),
                         receptive_field=int(model.receptive_field),
                         queues=[[int(model.residual_channels), int(d)] for d in model.dilations],
                         num_classes=int(model.num_classes), sample_rate=int(model.sample_rate))


# Tolerances, fp32. log_prob sums D (or C*H*W, or T) per-dimension terms, so its absolute error
# grows with D while its magnitude does too: rtol 1e-4 of a 30-nat log-likelihood is 3e-3 nats,
# and the per-dimension logits stay within atol. Worst max-abs error over 10 fresh-input seeds
# (batch 32; WaveNet also 4 x 2000 samples) on the trained zoo models is noted beside each.
# Sampling loops compare exactly: a flipped sample would show as an error of 1 or more.
register(Family("fvsbn", "fully visible sigmoid belief net: conditionals graph, dimension-by-dimension sampling",
                DIMENSIONWISE_PROTOCOL, _dimensionwise_roles, lambda m: BATCHES, Tolerance(1e-4, 1e-4),  # seen 1.5e-5
                ("dimensionwise",), _dimensionwise_loop))
register(Family("made", "MADE with folded masks, one conditionals graph per ordering (order-agnostic ensembles)",
                DIMENSIONWISE_PROTOCOL, _dimensionwise_roles, lambda m: BATCHES, Tolerance(1e-4, 1e-4),  # seen 9.2e-5 (log_prob)
                ("dimensionwise",), _dimensionwise_loop))
register(Family("nade", "NADE: conditionals graph and an O(H) step graph for sampling", NADE_PROTOCOL,
                _nade_roles, lambda m: BATCHES, Tolerance(1e-4, 1e-4), ("nade",), _nade_loop))  # seen 1.5e-5
register(Family("pixelcnn", "PixelCNN / gated PixelCNN: categorical conditionals, raster-scan sampling",
                PIXELCNN_PROTOCOL, _pixelcnn_roles, lambda m: BATCHES, Tolerance(1e-4, 1e-4), ("raster",), _pixelcnn_loop))  # seen 6.1e-5
register(Family("wavenet", "WaveNet: conditionals graph and a fast-generation step graph with layer queues",
                WAVENET_PROTOCOL, _wavenet_roles, _wavenet_shapes, Tolerance(1e-4, 1e-4),  # seen 1.2e-2 of ~3e4 nats (4e-7 rel)
                ("wavenet",), _wavenet_loop))
