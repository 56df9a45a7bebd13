"""int4 weight-only quantization: each MatMul over a constant 2-D weight becomes onnxruntime's MatMulNBits (4-bit
blocks along the input dimension, one float scale per block, a zero point unless symmetric); activations stay
float32. With accuracy level 4 the CPU kernel multiplies in int8 (activations quantized per block on the fly), the
fastest CPU path. Like onnxruntime-genai's int4 model, the linear layers and the LM head are quantized (a tied head
through its own transposed copy) and the token embedding (a Gather) stays float32.

A mode of `deploykit quantize` (the registry is `precision.CONVERTERS`); needs onnx and onnxruntime, no torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .checks import check_int
from .errors import InputError

ACCURACY_LEVELS = {0: "unset (the kernel's default)", 1: "fp32", 2: "fp16", 3: "bf16", 4: "int8"}


@dataclass(frozen=True)
class Int4Options:
    """Block size (weights per scale: a power of two from 16 to 256, the sizes onnxruntime's CPU kernels take),
    symmetric blocks (no zero point) or not, and the accuracy level: the lowest precision the kernel may compute
    in (ACCURACY_LEVELS)."""

    block_size: int = 32
    symmetric: bool = True
    accuracy_level: int = 4

    def check(self) -> None:
        """InputError naming the option that is out of range."""
        check_int("--block-size", self.block_size, 16, 256, meaning="weights per quantization block")
        if self.block_size & (self.block_size - 1):
            raise InputError(f"--block-size is {self.block_size}, expected a power of two (16, 32, 64, 128, 256).")
        if self.accuracy_level not in ACCURACY_LEVELS:
            levels = ", ".join(f"{k} ({v})" for k, v in ACCURACY_LEVELS.items())
            raise InputError(f"--accuracy-level is {self.accuracy_level!r}, expected one of {levels}.")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def convert(source: Path, target: Path, options: Int4Options) -> None:
    """Write the graph at `source` (linear layers as MatMul over constant 2-D float32 weights, which may live in
    external data beside it) at `target` with those MatMuls as MatMulNBits, one weight at a time: each weight is
    mapped, quantized, and its blocks written to `target`'s external-data file, as are the weights that stay float.
    Memory holds one fp32 weight and the graph's structure. Graphs whose weights come to no more than
    EXTERNAL_DATA_THRESHOLD are then written as one file, like an export's. InputError when the graph has no such
    MatMul."""
    import onnx

    from .onnx_refs import subgraphs
    from .onnx_weights import DataFile, finish_converted, weight_array

    model = onnx.load(str(source), load_external_data=False)
    done: dict[str, list[onnx.TensorProto]] = {}  # weight -> its packed blocks, scales (and zero points)
    data = target.with_name(target.name + ".data")

    def rewrite(graph: onnx.GraphProto, outer: dict[str, tuple[onnx.TensorProto, onnx.GraphProto]]) -> None:
        weights = outer | {t.name: (t, graph) for t in graph.initializer}  # name -> (weight, the graph holding it)
        nodes = []
        for node in graph.node:
            for sub in subgraphs(node):  # Loop / Scan bodies and If branches see the weights of every scope above
                rewrite(sub, weights)
            weight, holder = weights.get(node.input[1], (None, None)) if node.op_type == "MatMul" and node.domain in (
                "", "ai.onnx") else (None, None)
            if weight is None or len(weight.dims) != 2 or weight.data_type != onnx.TensorProto.FLOAT:
                nodes.append(node)
                continue
            if weight.name not in done:
                blocks = _blocks(weight_array(weight, source.parent), options)
                done[weight.name] = [store.tensor(f"{weight.name}_{suffix}", array) for suffix, array in blocks]
                holder.initializer.extend(done[weight.name])  # in the weight's own scope: seen wherever it was
            k, n = weight.dims
            attrs = {"K": k, "N": n, "bits": 4, "block_size": options.block_size}
            nodes.append(onnx.helper.make_node(
                "MatMulNBits", [node.input[0], *(t.name for t in done[weight.name])], list(node.output),
                name=node.name, domain="com.microsoft",
                **attrs | ({"accuracy_level": options.accuracy_level} if options.accuracy_level else {})))
        del graph.node[:]
        graph.node.extend(nodes)

    with DataFile(data) as store:
        rewrite(model.graph, {})
        if not done:
            store.handle.close()
            data.unlink()
            raise InputError("int4 quantizes linear layers (MatMul over a constant 2-D float32 weight) and this graph "
                             "has none (convolutions and recurrent cells stay float); use int8-dynamic or int8-static.")
        finish_converted(model, source.parent, target, store)


def _blocks(weight: np.ndarray, options: Int4Options) -> list[tuple[str, np.ndarray]]:
    """MatMulNBits' constant inputs for a [K, N] weight, named by suffix: 4-bit blocks of `block_size` along K,
    packed per column [N, blocks, block_size / 2], float scales [N, blocks], and zero points [N, ceil(blocks / 2)]
    unless symmetric; computed by onnxruntime's own kernel (the one its quantizer calls)."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits

    rows, cols = weight.shape
    blocks = -(-rows // options.block_size)
    padded = np.ascontiguousarray(np.pad(weight, ((0, blocks * options.block_size - rows), (0, 0)))
                                  if rows % options.block_size else weight)
    packed = np.zeros((cols, blocks, options.block_size // 2), np.uint8)
    scales = np.zeros((cols, blocks), np.float32)
    zero_points = np.zeros((cols, -(-blocks // 2)), np.uint8)
    quantize_matmul_4bits(packed, padded, scales, zero_points, options.block_size, cols, rows, options.symmetric)
    return [("Q4", packed), ("scales", scales)] + ([] if options.symmetric else [("zero_points", zero_points)])

