"""`export --fuse`: attention, RMS norm and rotary embeddings as single ONNX operators instead of dozens of small ones.

At opset 23 torch.onnx writes `F.scaled_dot_product_attention` as the standard `Attention` operator, and its
optimizer (onnxscript's ONNX fusions) rewrites the RMS-norm pattern (pow, mean, rsqrt, mul) into `RMSNormalization`
and rotate-half rotary embeddings into `RotaryEmbedding`; at opset 18 all three stay dozens of small nodes (MatMul,
Softmax, Where, Pow, ReduceMean, Slice, Neg, Concat). For transformers models with grouped-query attention the key
and value heads reach `Attention` as they are (`enable_gqa`), not repeated per query head first. A Llama-style
decoder step goes from 1355 nodes to 837 (412 after int4 quantization, which also drops the flatten/reshape around
each linear layer); the measured decode speed-ups are in docs/routes/hf.md.

The operators are standard ONNX, so the bundle is no onnxruntime-only graph, but it needs a runtime with opset 23
(onnxruntime 1.32 runs it; TensorRT engines are built from the default opset-18 export). The export's checks compare
the fused graph with the model's own, unpatched torch forward, as every export does.
"""

from __future__ import annotations

import collections
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from ..errors import InputError

FUSED_OPSET = 23
FUSED_OPS = ("Attention", "RMSNormalization", "RotaryEmbedding")


@contextmanager
def fused_tracing() -> Iterator[None]:
    """While torch.export traces: transformers' SDPA attention passes grouped key/value heads to SDPA with
    `enable_gqa` instead of repeating them (its own choice for unmasked CUDA runs), so opset 23's `Attention` takes
    them as they are. Without transformers loaded this changes nothing."""
    sdpa = sys.modules.get("transformers.integrations.sdpa_attention")
    if sdpa is None or not hasattr(sdpa, "use_gqa_in_sdpa"):
        yield
        return
    original = sdpa.use_gqa_in_sdpa
    sdpa.use_gqa_in_sdpa = lambda *args, **kwargs: True
    try:
        yield
    finally:
        sdpa.use_gqa_in_sdpa = original


def fused_ops(graphs: Mapping[str, Path]) -> dict[str, dict[str, int]]:
    """Per role, how many of each FUSED_OPS operator its graph holds (roles without any left out)."""
    import onnx

    found = {}
    for role, path in graphs.items():
        counts = collections.Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node
                                     if n.op_type in FUSED_OPS and n.domain in ("", "ai.onnx"))
        if counts:
            found[role] = dict(sorted(counts.items()))
    return found


def check_fused(model_name: str, found: Mapping[str, Mapping[str, int]]) -> None:
    """InputError when --fuse fused nothing: the bundle would only be harder to run, for no gain."""
    if not found:
        raise InputError(f"--fuse found no F.scaled_dot_product_attention call, RMS norm or rotary embedding in "
                         f"{model_name}'s graphs (attention written as matmul + softmax stays as it is), so there is "
                         "nothing to fuse; export without --fuse (its graphs run on more runtimes).")
