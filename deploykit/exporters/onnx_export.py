"""torch -> ONNX for one role: prepare the module, export with torch.onnx (dynamo), check, infer shapes."""

from __future__ import annotations

import copy
import inspect
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ExportError
from ..specs import GraphSpec, TensorSpec
from .recurrence import ONNX_TRANSLATIONS
from .registry import Role

OPSET = 18
_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64", onnx.TensorProto.FLOAT16: "float16"}


def prepare(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode, without gradients, with parametrizations (weight norm etc.) folded into plain weights.

    Folding is done per instance: torch's remove_parametrizations deletes the property from the
    Parametrized* class, which a deepcopy shares with the user's model, and would break it.
    """
    memo: dict[int, object] = {}
    for module in model.modules():  # legacy weight_norm keeps a non-leaf `weight`, which deepcopy refuses
        for hook in module._forward_pre_hooks.values():
            if type(hook).__name__ == "WeightNorm":
                memo[id(getattr(module, hook.name))] = getattr(module, hook.name).detach().clone()
    model = copy.deepcopy(model, memo).eval().requires_grad_(False)  # a scan over modules needing grad traces backward too
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            values = {name: getattr(module, name).detach().clone() for name in module.parametrizations}
            module.__class__ = module.__class__.__bases__[0]
            del module._modules["parametrizations"]
            for name, value in values.items():
                module.register_parameter(name, nn.Parameter(value, requires_grad=False))
        for hook in list(module._forward_pre_hooks.values()):  # legacy torch.nn.utils.weight_norm
            if type(hook).__name__ == "WeightNorm":
                torch.nn.utils.remove_weight_norm(module, hook.name)
    return model


def example_inputs(role: Role) -> tuple[torch.Tensor, ...]:
    """Deterministic example tensors at the role's example dims."""
    rng = np.random.default_rng(0)
    return tuple(torch.from_numpy(s.random(rng, role.example)) for s in role.inputs)


def _output_specs(model: onnx.ModelProto) -> tuple[TensorSpec, ...]:
    specs = []
    for out in model.graph.output:
        t = out.type.tensor_type
        dims = tuple(d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim)
        specs.append(TensorSpec(out.name, _ONNX_DTYPES.get(t.elem_type, str(t.elem_type)), dims))
    return tuple(specs)


def export_role(name: str, role: Role, path: Path, opset: int = OPSET) -> tuple[GraphSpec, int]:
    """Export one role to `path`; return its spec (outputs read back from the graph) and opset."""
    dynamic = tuple({i: d for i, d in enumerate(s.shape) if isinstance(d, str)} for s in role.inputs)
    params = inspect.signature(role.module.forward).parameters.values()
    fixed = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
    if any(p.kind == p.VAR_POSITIONAL for p in params) and len(dynamic) > fixed:  # forward(a, *rest): rest as one tuple
        dynamic = (*dynamic[:fixed], dynamic[fixed:])
    for noisy in ("torch.onnx", "onnx_ir", "onnxscript"):  # progress chatter and benign warnings
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                role.module,
                example_inputs(role),
                dynamo=True,
                input_names=[s.name for s in role.inputs],
                output_names=list(role.outputs),
                dynamic_shapes=dynamic,
                custom_translation_table=ONNX_TRANSLATIONS,
                opset_version=opset,
                verbose=False,
            )
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:400] if str(exc).strip() else type(exc).__name__
        raise ExportError(
            f"torch.onnx could not export role '{name}' of {type(role.module).__name__}: {first}. "
            "Check that forward() has no data-dependent Python control flow on tensor values."
        ) from exc
    program.save(str(path))
    model = onnx.load(str(path))
    try:
        onnx.checker.check_model(model, full_check=True)
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:
        raise ExportError(f"exported graph for role '{name}' failed the ONNX checker: {exc}") from exc
    onnx.save(model, str(path))
    spec = GraphSpec(role.inputs, _output_specs(model), role.dims)
    opset_found = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return spec, int(opset_found)
