"""int8 quantization with memory near one copy of the weights.

int8-dynamic (`dynamic`), one weight at a time: the graph onnxruntime's `quantize_dynamic` writes (weights int8,
symmetric, one scale per tensor; activations uint8, their scale computed at run time), built here so that memory
holds one fp32 weight and the graph's structure instead of the whole model twice (onnxruntime's quantizer copies the
loaded model and reloads a shape-inferred copy: 3.6-4.6x the weights for a 125M LM).

What is rewritten, as onnxruntime's dynamic quantizer does by default (top-level nodes, not subgraphs):
- MatMul over a constant float weight: DynamicQuantizeLinear of the input (once per input) -> MatMulInteger -> Cast
  -> Mul by the two scales; onnxruntime fuses these into DynamicQuantizeMatMul when it loads the graph.
- Conv over a constant weight: the same around ConvInteger, the bias added after.
- LSTM over constant weights: com.microsoft DynamicQuantizeLSTM (one scale per direction).
- Gather over a constant table (embeddings): a uint8 table (asymmetric, one scale), DequantizeLinear after it where
  a float is needed; a MatMul reading it takes the quantized rows as they are.
The values come from onnxruntime's own `quantize_data`, so the weights are bit for bit those of its quantizer (tested).

int8-static (`static`): onnxruntime's `quantize_static` (QDQ), given the activation ranges its MinMax calibrator
would find, measured here first over the same model (`min_max_ranges`): its calibrator loads the model, saves an
augmented copy and runs it while the quantizer's own copy is held (5.5x the weights for GPT-2); measured here, the
graph is read without its weights and one session holds them. The weights only MatMuls read (a language model's
linear layers) are quantized here first, one at a time, as its quantizer would (`matmul_weights`): it holds the
loaded model and each weight's float temporaries while it quantizes, 2.2-2.9x the weights of a 125M LM.

Modes of `deploykit quantize` (the registry is `precision.CONVERTERS`); needs onnx and onnxruntime, no torch.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import InputError
from .onnx_refs import read_names
from .onnx_weights import DataFile, finish_converted, weight_array

Quantized = tuple[str, str, str]  # a quantized value's names: values, scale, zero point

SMALL = 1024  # bytes: quantized tensors under this stay inline


def dynamic(source: Path, target: Path) -> None:
    """Write the graph at `source` (weights possibly in external data beside it) at `target` quantized int8-dynamic,
    one weight at a time; the new weights go to `target`'s external-data file, folded inline when the graph is
    small (finish_converted)."""
    model = onnx.load(str(source), load_external_data=False)
    with DataFile(target.with_name(target.name + ".data")) as store:
        _Rewriter(model.graph, source.parent, store).run()
        finish_converted(model, source.parent, target, store)


class _Rewriter:
    """One pass over a graph's top-level nodes, in order, rewriting those onnxruntime's dynamic quantizer rewrites.
    Its `weight` quantizes an initializer as both of onnxruntime's quantizers do (matmul_weights uses it too)."""

    def __init__(self, graph: onnx.GraphProto, folder: Path, store: DataFile) -> None:
        self.graph, self.folder, self.store = graph, folder, store
        self.weights = {t.name: t for t in graph.initializer if t.data_type == TensorProto.FLOAT}
        self.done: dict[str, Quantized] = {}  # weight or activation -> its quantized value
        self.gathered: dict[str, Quantized] = {}  # Gather outputs kept quantized until a float reader needs them
        self.made: set[str] = set()  # values the new nodes write: float Gather outputs, shared scale products
        self.nodes: list[onnx.NodeProto] = []

    def run(self) -> None:
        rewrites = {"MatMul": self._matmul, "Conv": self._conv, "LSTM": self._lstm, "Gather": self._gather}
        for node in self.graph.node:
            rewrite = rewrites.get(node.op_type) if node.domain in ("", "ai.onnx") else None
            if rewrite is None or not rewrite(node):
                self._float_inputs(read_names([node]))
                self.nodes.append(node)
        self._float_inputs({o.name for o in self.graph.output})
        del self.graph.node[:]
        self.graph.node.extend(self.nodes)

    def _float_inputs(self, names: set[str]) -> None:
        """DequantizeLinear for each quantized Gather output in `names` (once, before its first float reader)."""
        for name in sorted((names & self.gathered.keys()) - self.made):
            values, scale, zero = self.gathered[name]
            self.made.add(name)
            self.nodes.append(helper.make_node("DequantizeLinear", [values, scale, zero], [name],
                                               f"{name}_DequantizeLinear"))

    def weight(self, name: str, signed: bool, axis: int | None = None, perm: tuple[int, ...] | None = None
                ) -> Quantized:
        """`name` quantized once: int8 symmetric (signed) or uint8 asymmetric, one scale per tensor or per index
        of `axis`, the values stored transposed by `perm` if given; onnxruntime's quantize_data computes them."""
        if name not in self.done:
            from onnxruntime.quantization.quant_utils import quantize_data

            array = weight_array(self.weights[name], self.folder)
            kind = TensorProto.INT8 if signed else TensorProto.UINT8
            parts = [array] if axis is None else [array.take(i, axis) for i in range(array.shape[axis])]
            zeros, scales, values = zip(*(quantize_data(p.reshape(-1), kind, signed) for p in parts))
            dtype = helper.tensor_dtype_to_np_dtype(kind)
            if axis is None:
                data = np.asarray(values[0], dtype).reshape(array.shape)
                scale, zero = np.asarray(scales[0], np.float32).reshape(()), np.asarray(zeros[0], dtype).reshape(())
            else:
                data = np.stack([np.asarray(v, dtype).reshape(p.shape) for v, p in zip(values, parts)], axis)
                scale, zero = np.hstack(scales).astype(np.float32), np.hstack(zeros).astype(dtype)
            data = data if perm is None else np.ascontiguousarray(data.transpose(perm))
            self.done[name] = (self._tensor(f"{name}_quantized", data), self._tensor(f"{name}_scale", scale),
                               self._tensor(f"{name}_zero_point", zero))
        return self.done[name]

    def _tensor(self, name: str, array: np.ndarray) -> str:
        self.graph.initializer.append(self.store.tensor(name, array) if array.nbytes >= SMALL
                                      else numpy_helper.from_array(array, name))
        return name

    def _activation(self, name: str) -> Quantized:
        """A run-time value quantized to uint8 by one DynamicQuantizeLinear, shared by its readers; a quantized
        Gather output as it is."""
        if name in self.gathered:
            return self.gathered[name]
        if name not in self.done:
            self.done[name] = (f"{name}_quantized", f"{name}_scale", f"{name}_zero_point")
            self.nodes.append(helper.make_node("DynamicQuantizeLinear", [name], list(self.done[name]),
                                               f"{name}_QuantizeLinear"))
        return self.done[name]

    def _integer(self, node: onnx.NodeProto, op: str, weight: str, result: str, **attrs: object) -> None:
        """`op` (MatMulInteger / ConvInteger) over the quantized input and weight, cast to float and scaled by both
        scales into `result`."""
        x, x_scale, x_zero = self._activation(node.input[0])
        w, w_scale, w_zero = self.weight(weight, signed=True)
        name = f"{node.name}_quant" if node.name else ""
        integer = f"{node.output[0]}_output_quantized"
        scales = f"{name}_scales_mul" if name else f"{x_scale}_{w_scale}_mul"
        self.nodes += [helper.make_node(op, [x, w, x_zero, w_zero], [integer], name, **attrs),
                       helper.make_node("Cast", [integer], [f"{integer}_cast_output"], f"{integer}_cast",
                                        to=TensorProto.FLOAT)]
        if f"{scales}:0" not in self.made:  # unnamed nodes over the same input and weight share it
            self.made.add(f"{scales}:0")
            self.nodes.append(helper.make_node("Mul", [x_scale, w_scale], [f"{scales}:0"], scales))
        self.nodes += [helper.make_node("Mul", [f"{integer}_cast_output", f"{scales}:0"], [result],
                                        f"{name}_output_scale_mul" if name else "")]

    def _matmul(self, node: onnx.NodeProto) -> bool:
        if node.input[1] not in self.weights or node.input[0] in self.weights:
            return False
        self._integer(node, "MatMulInteger", node.input[1], node.output[0])
        return True

    def _conv(self, node: onnx.NodeProto) -> bool:
        if node.input[1] not in self.weights or node.input[0] in self.weights:
            return False
        bias = len(node.input) > 2 and node.input[2]
        result = f"{node.output[0]}quant_scaled_output" if bias else node.output[0]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        self._integer(node, "ConvInteger", node.input[1], result, **attrs)
        if bias:
            self._float_inputs({node.input[2]})
            rank = len(self.weights[node.input[1]].dims)
            shape = self._tensor(f"{node.output[0]}_bias_reshape_shape", np.array([1, -1] + [1] * (rank - 2), np.int64))
            reshaped = f"{node.output[0]}_bias_reshape_output"
            self.nodes += [helper.make_node("Reshape", [node.input[2], shape], [reshaped]),
                           helper.make_node("Add", [result, reshaped], [node.output[0]], f"{node.output[0]}_bias_add")]
        return True

    def _lstm(self, node: onnx.NodeProto) -> bool:
        w, r = node.input[1], node.input[2]
        if w not in self.weights or r not in self.weights or len(self.weights[w].dims) != 3 \
                or len(self.weights[r].dims) != 3:
            return False
        self._float_inputs(read_names([node]))
        # [directions, 4 hidden, in] -> int8 [directions, in, 4 hidden], a scale per direction
        (wq, w_scale, w_zero), (rq, r_scale, r_zero) = (self.weight(name, signed=True, axis=0, perm=(0, 2, 1))
                                                        for name in (w, r))
        rest = [node.input[i] if len(node.input) > i else "" for i in range(3, 8)]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name != "layout"}
        self.nodes.append(helper.make_node(
            "DynamicQuantizeLSTM", [node.input[0], wq, rq, *rest, w_scale, w_zero, r_scale, r_zero], list(node.output),
            f"{node.name}_quant" if node.name else "", domain="com.microsoft", **attrs))
        return True

    def _gather(self, node: onnx.NodeProto) -> bool:
        if node.input[0] not in self.weights:
            return False
        self._float_inputs({node.input[1]})
        values, scale, zero = self.weight(node.input[0], signed=False)
        rows = f"{node.output[0]}_quantized"
        gathered = onnx.NodeProto()
        gathered.CopyFrom(node)
        gathered.input[0], gathered.output[0] = values, rows
        self.nodes.append(gathered)
        self.gathered[node.output[0]] = (rows, scale, zero)
        return True


def static(source: Path, target: Path, batches: Iterable[dict[str, np.ndarray]], exclude: list[str]) -> None:
    """Write the graph at `source` at `target` quantized int8-static (QDQ, int8 activations and weights) by
    onnxruntime's quantize_static, the activation ranges calibrated on `batches` by min_max_ranges and handed to it as
    a calibration cache; nodes named in `exclude` stay float."""
    from onnxruntime import quantization as q
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData, save_tensors_data

    if "calibration_cache_path" not in inspect.signature(q.quantize_static).parameters:
        import onnxruntime

        raise InputError(f"int8-static needs onnxruntime's quantize_static with calibration_cache_path (1.32 has it); "
                         f"this is onnxruntime {onnxruntime.__version__}: upgrade onnxruntime.")
    cache = target.with_name(target.name + ".ranges.json")
    weighted = target.with_name(target.name + ".matmul-weights.onnx")
    try:
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, min_max_ranges(source, _calibrated_ops(), batches)),
                          cache)
        matmul_weights(source, weighted, set(exclude))
        q.quantize_static(str(weighted), str(target), None, quant_format=q.QuantFormat.QDQ,
                          activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8, nodes_to_exclude=exclude,
                          calibration_cache_path=str(cache))
    finally:
        for path in (cache, weighted, weighted.with_name(weighted.name + ".data")):
            path.unlink(missing_ok=True)


def matmul_weights(source: Path, target: Path, exclude: set[str]) -> None:
    """Write the graph at `source` at `target` with each float weight that only MatMuls read (top-level ones not in
    `exclude`; not a graph input or output) quantized as quantize_static quantizes it: int8 symmetric, one scale per
    tensor, by onnxruntime's own functions, read through a DequantizeLinear named as its quantizer names them.
    quantize_static then keeps those as they are (it leaves a tensor a DequantizeLinear writes), so it loads a quarter
    of their bytes. One weight at a time; the rest of the graph as it was."""
    from onnxruntime.quantization.quant_utils import add_dequant_output_suffix, add_dequant_suffix

    model = onnx.load(str(source), load_external_data=False)
    graph = model.graph
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in read_names([node]):
            readers.setdefault(name, []).append(node)
    outside = {v.name for v in [*graph.input, *graph.output]}  # an initializer may be an overridable input
    chosen = [t for t in graph.initializer if t.data_type == TensorProto.FLOAT and t.name not in outside
              and t.name in readers and all(n.op_type == "MatMul" and n.domain in ("", "ai.onnx")
                                            and n.name not in exclude for n in readers[t.name])]
    dequantized = []
    with DataFile(target.with_name(target.name + ".data")) as store:
        rewriter = _Rewriter(graph, source.parent, store)  # its int8 weights are the QDQ quantizer's, names included
        for tensor in chosen:
            read = add_dequant_output_suffix(tensor.name)
            dequantized.append(helper.make_node("DequantizeLinear", list(rewriter.weight(tensor.name, signed=True)),
                                                [read], add_dequant_suffix(tensor.name)))
            for node in readers[tensor.name]:
                node.input[:] = [read if name == tensor.name else name for name in node.input]
        nodes = dequantized + list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes)
        finish_converted(model, source.parent, target, store)


def _calibrated_ops() -> set[str]:
    """The op types whose inputs and outputs quantize_static calibrates by default."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return set(QLinearOpsRegistry) | set(QDQRegistry)


def min_max_ranges(source: Path, op_types: set[str], batches: Iterable[dict[str, np.ndarray]]
                   ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The (lowest, highest) value of each float tensor that a top-level node of `op_types` reads or writes, over
    `batches`, as onnxruntime's MinMaxCalibrater finds them (the same tensors, ReduceMin / ReduceMax in an unoptimized
    session, NaN ignored), with the graph read without its weights: the session holds the only copy of them."""
    import onnxruntime as ort

    inferred = source.with_name(source.stem + ".inferred.onnx")  # beside the source: its external data resolves
    augmented = source.with_name(source.stem + ".augmented.onnx")
    try:
        onnx.shape_inference.infer_shapes_path(str(source), str(inferred))
        model = onnx.load(str(inferred), load_external_data=False)
        graph = model.graph
        types = {v.name: v.type for v in [*graph.value_info, *graph.output, *graph.input]}
        weights = {t.name for t in graph.initializer}
        tensors = sorted({name for node in graph.node if node.op_type in op_types
                          for name in [*node.input, *node.output] if name in types and name not in weights
                          and types[name].tensor_type.elem_type in (TensorProto.FLOAT, TensorProto.FLOAT16)})
        shape = "deploykit/calibration/flat"
        graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), shape))
        for name in tensors:
            for op in ("ReduceMin", "ReduceMax"):
                graph.node.extend([helper.make_node(op, [name], [f"{name}_{op}_Reshape"], keepdims=1),
                                   helper.make_node("Reshape", [f"{name}_{op}_Reshape", shape], [f"{name}_{op}"])])
                graph.output.append(helper.make_tensor_value_info(f"{name}_{op}", types[name].tensor_type.elem_type,
                                                                  [None]))
        onnx.save(model, str(augmented))
        del model, graph
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # as the calibrator runs it
        options.log_severity_level = 3  # errors come back as exceptions; its warnings are noise to users
        session = ort.InferenceSession(str(augmented), options, providers=["CPUExecutionProvider"])
        names = [f"{name}_{op}" for name in tensors for op in ("ReduceMin", "ReduceMax")]
        seen: dict[str, np.ndarray] = {}
        runs = 0
        for runs, feeds in enumerate(batches, 1):
            for name, value in zip(names, session.run(names, feeds) if names else []):
                reduce = np.nanmin if name.endswith("_ReduceMin") else np.nanmax
                seen[name] = value if name not in seen else reduce([seen[name], value], axis=0)
        del session
    finally:
        inferred.unlink(missing_ok=True)
        augmented.unlink(missing_ok=True)
    if not runs:
        raise InputError("int8-static calibration got no batches; pass --calibration 1 or more.")
    return {name: (seen[f"{name}_ReduceMin"], seen[f"{name}_ReduceMax"]) for name in tensors}
