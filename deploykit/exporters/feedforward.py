"""Feed-forward families: MLP, CNN, FCN/U-Net and the deterministic autoencoder."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..runtimes.graphs import AutoencoderConfig, ClassifierConfig, SegmenterConfig
from ..specs import DimRule, TensorSpec
from .registry import Family, Role, Tolerance, attribute, register

BATCHES = [{"batch": 1}, {"batch": 7}]


def batch_input(name: str, shape: tuple[int, ...]) -> TensorSpec:
    """float32 input [batch, *shape]."""
    return TensorSpec(name, "float32", ("batch", *shape))


def spatial_rules(model: nn.Module, family: str, protocol: str) -> tuple[tuple[int, int, int], dict[str, DimRule]]:
    """(C, H, W) example shape and the height/width rules of a fully convolutional model."""
    channels, height, width = attribute(model, "input_shape", family, protocol)
    multiple = int(attribute(model, "spatial_multiple", family, protocol))
    rule = DimRule(min=max(multiple, int(getattr(model, "spatial_min", 1))), multiple_of=multiple)
    return (channels, height, width), {"height": rule, "width": rule}


def spatial_shapes(model: nn.Module) -> list[dict[str, int]]:
    """Batch 1 and 7 at the example size, then batch 2 at a larger non-square size from the same export."""
    _, h, w = model.input_shape
    m = int(model.spatial_multiple)
    return [
        {"batch": 1, "height": h, "width": w},
        {"batch": 7, "height": h, "width": w},
        {"batch": 2, "height": 2 * h, "width": w + m},
    ]


def spatial_input(name: str, channels: int) -> TensorSpec:
    """float32 image [batch, C, height, width] with dynamic height and width."""
    return TensorSpec(name, "float32", ("batch", channels, "height", "width"))


MLP_PROTOCOL = "`input_shape` (feature shape without batch, e.g. (64,)); forward(x) -> logits [batch, classes]."
CNN_PROTOCOL = "`input_shape` = (C, H, W); forward(image) -> logits [batch, classes]. Batch is dynamic."
FCN_PROTOCOL = (
    "`input_shape` = (C, H, W) example size and `spatial_multiple` (H and W must be multiples of it); "
    "forward(image [batch, C, H, W]) -> per-pixel logits [batch, classes, H, W]. Batch, H and W are dynamic."
)
AE_PROTOCOL = "`input_shape` and submodules `encoder` (x -> code [batch, d]) and `decoder` (code -> reconstruction)."


def classifier_roles(input_name: str, protocol: str, family: str) -> Any:
    def roles(model: nn.Module) -> dict[str, Role]:
        shape = tuple(attribute(model, "input_shape", family, protocol))
        return {"model": Role(model, (batch_input(input_name, shape),), ("logits",), {"batch": 2})}

    return roles


def _fcn_roles(model: nn.Module) -> dict[str, Role]:
    (c, h, w), dims = spatial_rules(model, "fcn", FCN_PROTOCOL)
    return {"model": Role(model, (spatial_input("image", c),), ("logits",), {"batch": 2, "height": h, "width": w}, dims)}


def _autoencoder_roles(model: nn.Module) -> dict[str, Role]:
    shape = tuple(attribute(model, "input_shape", "autoencoder", AE_PROTOCOL))
    encoder = attribute(model, "encoder", "autoencoder", AE_PROTOCOL)
    decoder = attribute(model, "decoder", "autoencoder", AE_PROTOCOL)
    with torch.no_grad():
        code = tuple(encoder(torch.zeros(2, *shape)).shape[1:])
    return {
        "encoder": Role(encoder, (batch_input("x", shape),), ("code",), {"batch": 2}),
        "decoder": Role(decoder, (batch_input("code", code),), ("reconstruction",), {"batch": 2}),
    }


# Tolerances, fp32, for |ort - torch| <= atol + rtol * |torch|. Worst max-abs error seen over 10
# fresh-input seeds on the trained zoo models (ORT-CPU 1.31 vs torch 2.13, x86 here) is noted per
# family; bounds leave >= 5x headroom for other CPUs' kernels (AVX2 vs AVX-512 reorder sums).
# Linear stacks round at ~sqrt(fan_in) * 6e-8 * |activation|; conv stacks differ more because ORT
# fuses Conv+BatchNorm(+ReLU) and picks its own conv algorithm, and rounding accumulates with depth.
register(Family("mlp", "multi-layer perceptron classifier", MLP_PROTOCOL,
                classifier_roles("x", MLP_PROTOCOL, "mlp"), lambda m: BATCHES, Tolerance(1e-4, 1e-4),  # seen 1.1e-5
                ("classifier",), lambda m: ClassifierConfig(), structured=True))
register(Family("cnn", "convolutional classifier", CNN_PROTOCOL,
                classifier_roles("image", CNN_PROTOCOL, "cnn"), lambda m: BATCHES, Tolerance(1e-4, 1e-3),  # seen 1.9e-5
                ("classifier",), lambda m: ClassifierConfig(), structured=True))
register(Family("fcn", "fully convolutional network / U-Net, dynamic batch, height and width", FCN_PROTOCOL,
                _fcn_roles, spatial_shapes, Tolerance(1e-4, 1e-3),  # seen 1.2e-5
                ("segmenter",), lambda m: SegmenterConfig(), structured=True))
register(Family("autoencoder", "deterministic autoencoder: encoder and decoder graphs", AE_PROTOCOL,
                _autoencoder_roles, lambda m: BATCHES, Tolerance(2e-5, 1e-4),  # seen 1.9e-6
                ("autoencoder",), lambda m: AutoencoderConfig()))
