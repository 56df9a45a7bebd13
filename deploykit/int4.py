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


def convert(model: Any, target: Path, options: Int4Options) -> None:
    """Write `model` (an onnx ModelProto whose linear layers are MatMul over constant weights) at `target` with
    those MatMuls as MatMulNBits; InputError when it has none."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer  # precision: a quiet root logger

    quantizer = MatMulNBitsQuantizer(model, block_size=options.block_size, is_symmetric=options.symmetric,
                                     accuracy_level=options.accuracy_level)  # builds its default (RTN) weight config
    quantizer.process()
    out = quantizer.model.model
    if not any(node.op_type == "MatMulNBits" for node in out.graph.node):
        raise InputError("int4 quantizes linear layers (MatMul over a constant 2-D weight) and this graph has none "
                         "(convolutions and recurrent cells stay float); use int8-dynamic or int8-static.")
    onnx.save(out, str(target))
