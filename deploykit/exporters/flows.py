"""Normalizing-flow families: NICE, RealNVP, Glow (coupling flows) and MAF / IAF (autoregressive flows).

Every flow exports both directions: `log_prob` (x -> log p(x), z, logdet) and `sample` (z -> x).
What ONNX cannot express is computed here: each invertible 1x1 convolution becomes a constant W,
a constant W^-1 and a constant log|det W| (the graph multiplies it by H*W, so any image size works).
The slow direction of an autoregressive flow (MAF sampling, IAF density: one MADE pass per
dimension) is put in the graph as a torch scan (ONNX Scan), and each layer's single pass is also
exported as `inverse_step.{k}` so the runtime can run the same loop on the host.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch._higher_order_ops.scan import scan

from ..errors import ExportError
from ..nn.flows import Result, conv1x1, standard_normal_log_prob
from ..runtimes.flows import FlowConfig
from ..specs import DimRule, TensorSpec
from .autoregressive import fold_masks
from .feedforward import BATCHES
from .registry import Family, Role, Tolerance, attribute, register

COUPLING_PROTOCOL = (
    "forward(x) -> (z, logabsdet [batch]) and inverse(z) -> (x, logabsdet), z of x's shape, standard normal base; "
    "`event_shape` ([D] or [C, H, W]), `squeeze_factor` (H and W must be multiples of it; 1 for vectors) and "
    "`levels` (discrete levels of dequantized data in [0, 1), or 0). Invertible 1x1 convolutions are modules with "
    "invertible_weight() -> W [C, C] and forward/inverse = conv1x1(x, W or W^-1, +-log|det W|)."
)
AUTOREGRESSIVE_PROTOCOL = (
    "the coupling-flow protocol for vectors, plus `layers`: the autoregressive layers in data -> latent order, "
    "each with `ordering` (a permutation of 0..D-1) and candidate(partial, given) -> (values, logabsdet), one pass "
    "of the slow direction that is exact for dimension i once the dimensions before i in the ordering are."
)


class FrozenConv1x1(nn.Module):
    """A 1x1 convolution whose W, W^-1 and log|det W| were computed at export (float64, then stored as float32)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        w64 = weight.detach().double()
        self.register_buffer("weight", w64.float())
        self.register_buffer("inverse_weight", torch.linalg.inv(w64).float())
        self.register_buffer("log_abs_det", torch.linalg.slogdet(w64)[1].float())

    def forward(self, x: torch.Tensor) -> Result:
        return conv1x1(x, self.weight, self.log_abs_det)

    def inverse(self, y: torch.Tensor) -> Result:
        return conv1x1(y, self.inverse_weight, -self.log_abs_det)


def fold_inverses(model: nn.Module) -> nn.Module:
    """A copy of `model` where every module with `invertible_weight()` is a FrozenConv1x1."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if callable(getattr(child, "invertible_weight", None)):
                with torch.no_grad():
                    weight = child.invertible_weight().detach()
                cond = float(torch.linalg.cond(weight.double()))
                if not cond < 1e6:
                    raise ExportError(f"the 1x1 convolution '{name}' of {type(parent).__name__} has a singular W "
                                      f"(condition number {cond:.3g}); its inverse would be meaningless.")
                setattr(parent, name, FrozenConv1x1(weight))
    return model


class LogProbGraph(nn.Module):
    """x -> (log p(x), z, logdet) through `to_latent` (forward(x) -> (z, logdet))."""

    def __init__(self, to_latent: nn.Module) -> None:
        super().__init__()
        self.to_latent = to_latent

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z, logdet = self.to_latent(x)
        return standard_normal_log_prob(z) + logdet, z, logdet


class Inverse(nn.Module):
    """A flow's inverse direction as a module: forward(z) -> (x, logdet)."""

    def __init__(self, flow: nn.Module) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, z: torch.Tensor) -> Result:
        return self.flow.inverse(z)


class SampleGraph(nn.Module):
    """z -> x through `to_data` (forward(z) -> (x, logdet))."""

    def __init__(self, to_data: nn.Module) -> None:
        super().__init__()
        self.to_data = to_data

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.to_data(z)[0]


class ScanInversion(nn.Module):
    """The slow direction of autoregressive layers, each as a torch scan of D passes (ONNX Scan in the graph).

    Pass r keeps the candidate of the r-th dimension in the layer's ordering, exactly as the host
    loop and the model's own Python loop do.
    """

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        for k, layer in enumerate(layers):
            self.register_buffer(f"picks_{k}", torch.eye(len(layer.ordering))[layer.ordering].bool())

    def forward(self, given: torch.Tensor) -> Result:
        total = given.new_zeros(given.shape[0])
        for k, layer in enumerate(self.layers):
            def body(partial: torch.Tensor, pick: torch.Tensor, layer: nn.Module = layer, given: torch.Tensor = given
                     ) -> tuple[torch.Tensor, torch.Tensor]:
                value, logdet = layer.candidate(partial, given)
                return torch.where(pick, value, partial), logdet

            given, logdets = scan(body, torch.zeros_like(given), getattr(self, f"picks_{k}"))
            total = total + logdets[-1]
        return given, total


class InverseStep(nn.Module):
    """One pass of one layer's slow direction, for the host loop: (partial, given) -> (candidate, logdet)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, partial: torch.Tensor, given: torch.Tensor) -> Result:
        return self.layer.candidate(partial, given)


def _event(model: nn.Module, family: str, protocol: str) -> tuple[list[int], int]:
    shape = [int(d) for d in attribute(model, "event_shape", family, protocol)]
    squeeze = int(attribute(model, "squeeze_factor", family, protocol))
    if len(shape) not in (1, 3):
        raise ExportError(f"{type(model).__name__}.event_shape is {shape}; expected [D] or [C, H, W].")
    return shape, squeeze


def _spec(name: str, model: nn.Module, family: str, protocol: str) -> tuple[TensorSpec, dict[str, DimRule], dict[str, int]]:
    """The x or z spec, its dim rules and export example dims."""
    shape, squeeze = _event(model, family, protocol)
    levels = int(attribute(model, "levels", family, protocol))
    bounds = {"low": 0, "high": 1} if name == "x" and levels else {}
    if len(shape) == 1:
        return TensorSpec(name, "float32", ("batch", shape[0]), **bounds), {}, {"batch": 2}
    rule = DimRule(min=squeeze, multiple_of=squeeze)
    spec = TensorSpec(name, "float32", ("batch", shape[0], "height", "width"), **bounds)
    return spec, {"height": rule, "width": rule}, {"batch": 2, "height": 4 * squeeze, "width": 3 * squeeze}


def _graph_roles(model: nn.Module, family: str, protocol: str, to_latent: nn.Module, to_data: nn.Module) -> dict[str, Role]:
    """log_prob and sample roles exporting `to_latent` / `to_data`, checked against the model itself."""
    x, dims, example = _spec("x", model, family, protocol)
    z, _, _ = _spec("z", model, family, protocol)
    return {
        "log_prob": Role(LogProbGraph(to_latent), (x,), ("log_prob", "z", "logdet"), example, dims, LogProbGraph(model)),
        "sample": Role(SampleGraph(to_data), (z,), ("x",), example, dims, SampleGraph(Inverse(model))),
    }


def _coupling_roles(model: nn.Module, family: str) -> dict[str, Role]:
    folded = fold_inverses(model)
    return _graph_roles(model, family, COUPLING_PROTOCOL, folded, Inverse(folded))


def _layers(model: nn.Module, family: str) -> list[nn.Module]:
    layers = list(attribute(model, "layers", family, AUTOREGRESSIVE_PROTOCOL))
    for k, layer in enumerate(layers):
        if not callable(getattr(layer, "candidate", None)) or not hasattr(layer, "ordering"):
            raise ExportError(f"layer {k} of {type(model).__name__} has no candidate() or ordering; family '{family}' "
                              f"needs: {AUTOREGRESSIVE_PROTOCOL}")
    return layers


def _autoregressive_roles(model: nn.Module, family: str) -> dict[str, Role]:
    folded = fold_masks(model)
    layers = _layers(folded, family)
    ref_layers = _layers(model, family)
    if family == "maf":
        roles = _graph_roles(model, family, AUTOREGRESSIVE_PROTOCOL, folded, ScanInversion(layers[::-1]))
    else:
        roles = _graph_roles(model, family, AUTOREGRESSIVE_PROTOCOL, ScanInversion(layers), Inverse(folded))
    vec = roles["log_prob"].inputs[0].shape
    step_in = (TensorSpec("partial", "float32", vec), TensorSpec("given", "float32", vec))
    for k, (layer, ref) in enumerate(zip(layers, ref_layers)):
        roles[f"inverse_step.{k}"] = Role(InverseStep(layer), step_in, ("candidate", "logdet"), {"batch": 2},
                                         reference=InverseStep(ref))
    return roles


def _loop(model: nn.Module, family: str, protocol: str) -> FlowConfig:
    shape, squeeze = _event(model, family, protocol)
    autoregressive = family in ("maf", "iaf")
    return FlowConfig(
        roles=["log_prob", "sample"], event_shape=shape, squeeze_factor=squeeze, levels=int(model.levels),
        value_range=[-3.0, 3.0] if len(shape) == 3 and not model.levels else [0.0, 1.0],
        sequential=("sample" if family == "maf" else "log_prob") if autoregressive else None,
        orderings=[list(layer.ordering) for layer in _layers(model, family)] if autoregressive else None,
    )


def _image_shapes(model: nn.Module, family: str) -> list[dict[str, int]]:
    """Two batch sizes at the trained size and one other image size from the same export."""
    shape, squeeze = _event(model, family, COUPLING_PROTOCOL)
    if len(shape) == 1:
        return BATCHES
    h, w = shape[1:]
    return [{"batch": 1, "height": h, "width": w}, {"batch": 7, "height": h, "width": w},
            {"batch": 2, "height": 2 * h, "width": w + squeeze}]


# Tolerances, fp32 (see README): log p(x) sums D log-densities and log-determinants over many layers,
# so its absolute error grows with D and depth; z and x stay within atol per element.
for _name, _description in [
    ("nice", "NICE: additive coupling flow, log_prob and sample graphs"),
    ("realnvp", "RealNVP: affine coupling flow (vectors, or images with checkerboard/channel masks and multi-scale)"),
    ("glow", "Glow: actnorm, invertible 1x1 convolutions folded to constant W, W^-1, log|det W|, multi-scale learned prior"),
]:
    register(Family(_name, _description, COUPLING_PROTOCOL, lambda m, name=_name: _coupling_roles(m, name),
                    lambda m, name=_name: _image_shapes(m, name), Tolerance(1e-4, 1e-4),
                    ("flow",), lambda m, name=_name: _loop(m, name, COUPLING_PROTOCOL)))
register(Family("maf", "MAF: one-pass log_prob graph; sampling as an in-graph scan and per-layer inverse_step graphs",
                AUTOREGRESSIVE_PROTOCOL, lambda m: _autoregressive_roles(m, "maf"), lambda m: BATCHES, Tolerance(1e-4, 1e-4),
                ("flow",), lambda m: _loop(m, "maf", AUTOREGRESSIVE_PROTOCOL)))
register(Family("iaf", "IAF: one-pass sample graph; density as an in-graph scan and per-layer inverse_step graphs",
                AUTOREGRESSIVE_PROTOCOL, lambda m: _autoregressive_roles(m, "iaf"), lambda m: BATCHES, Tolerance(1e-4, 1e-4),
                ("flow",), lambda m: _loop(m, "iaf", AUTOREGRESSIVE_PROTOCOL)))
