"""GAN generator families: DCGAN, conditional GAN and CycleGAN-style image-to-image generators."""

from __future__ import annotations

from torch import nn

from ..runtimes.generator import GeneratorConfig
from ..runtimes.graphs import Image2ImageConfig
from ..specs import TensorSpec
from .feedforward import BATCHES, spatial_input, spatial_rules, spatial_shapes
from .registry import Family, Role, Tolerance, attribute, register

DCGAN_PROTOCOL = "`latent_dim`; forward(z [batch, latent_dim]) -> image [batch, C, H, W] in [-1, 1]."
CGAN_PROTOCOL = (
    "`latent_dim` and `num_classes`; forward(z [batch, latent_dim], label int64 [batch]) -> image in [-1, 1]."
)
CYCLEGAN_PROTOCOL = (
    "`input_shape` = (C, H, W) and `spatial_multiple`; forward(image [batch, C, H, W] in [-1, 1]) -> image "
    "of the same shape. Batch, H and W are dynamic."
)
VALUE_RANGE = [-1.0, 1.0]


def _latent(model: nn.Module, family: str, protocol: str) -> TensorSpec:
    return TensorSpec("z", "float32", ("batch", int(attribute(model, "latent_dim", family, protocol))))


def _dcgan_roles(model: nn.Module) -> dict[str, Role]:
    return {"model": Role(model, (_latent(model, "dcgan", DCGAN_PROTOCOL),), ("image",), {"batch": 2})}


def _cgan_roles(model: nn.Module) -> dict[str, Role]:
    classes = int(attribute(model, "num_classes", "cgan", CGAN_PROTOCOL))
    inputs = (_latent(model, "cgan", CGAN_PROTOCOL), TensorSpec("label", "int64", ("batch",), high=classes))
    return {"model": Role(model, inputs, ("image",), {"batch": 2})}


def _cyclegan_roles(model: nn.Module) -> dict[str, Role]:
    (c, h, w), dims = spatial_rules(model, "cyclegan", CYCLEGAN_PROTOCOL)
    example = {"batch": 2, "height": h, "width": w}
    return {"model": Role(model, (spatial_input("image", c),), ("translated",), example, dims)}


def _generator_loop(model: nn.Module) -> GeneratorConfig:
    return GeneratorConfig(latent_dim=int(model.latent_dim), num_classes=int(getattr(model, "num_classes", 0)),
                           value_range=VALUE_RANGE)


# Generators end in tanh (|output| <= 1, slope <= 1), so errors stay those of the transposed-conv
# stack before it; InstanceNorm in the CycleGAN generator divides by per-image standard deviations
# summed in another order by ORT. Worst max-abs error over 10 fresh seeds noted beside each
# (see feedforward.py for how these were measured).
register(Family("dcgan", "DCGAN generator: z -> image", DCGAN_PROTOCOL, _dcgan_roles,
                lambda m: BATCHES, Tolerance(1e-5, 1e-4), ("generator",), _generator_loop))  # seen 1.2e-6
register(Family("cgan", "conditional GAN generator: (z, label) -> image", CGAN_PROTOCOL, _cgan_roles,
                lambda m: BATCHES, Tolerance(1e-5, 1e-4), ("generator",), _generator_loop))  # seen 1.3e-6
register(Family("cyclegan", "CycleGAN-style image-to-image generator", CYCLEGAN_PROTOCOL, _cyclegan_roles,
                spatial_shapes, Tolerance(2e-5, 1e-4),  # seen 1.7e-6
                ("image2image",), lambda m: Image2ImageConfig(value_range=VALUE_RANGE)))
