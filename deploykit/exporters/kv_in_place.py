"""Family `gpt-inplace`: a causal decoder whose KV cache is written in place (loop kind `kv_in_place`,
runtimes/kv_in_place.py).

The `gpt` family's graph returns past + new keys and values as new tensors, so every decode step copies the whole
cache (and allocates it again). This family's `decoder_in_place` graph takes per-layer buffers [batch, heads,
capacity, head_dim] and writes the step's keys and values into them at positions total - seq .. total - 1 (total:
the attention mask's width, past + seq). The torch side writes with `torch.scatter` (`write`), which torch.onnx
exports as ScatterElements; `tensor_scatter_writes` turns each into opset 24's TensorScatter, which onnxruntime runs
in place when its output is bound to its input's memory, as the runtime does. The graph must read each buffer only
through that write, or the aliasing would change what other nodes see: the loop kind's graph check refuses any other
reader at export and after quantize.

transformers causal LMs (hf:DIR with `--family gpt-inplace`) get the buffers through a transformers Cache whose
layers write with `write` and report the buffer's full length to the model's mask code, so sliding windows and
other masks are the model's own, over absolute positions.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..onnx_refs import read_names
from ..runtimes.kv_in_place import ROLE, KVInPlaceConfig
from ..runtimes.tokens import lm_fields
from .onnx_export import weight_bytes
from .recurrent import vocabulary
from .registry import Family, Role, Tolerance, register
from .transformer import DecoderWithPast, decoder_config, decoder_shapes, decoder_specs

PROTOCOL = (
    "`vocab` (str or list of tokens), `context` (max positions), `layers`, `heads`, `head_dim` and "
    "forward_in_place(tokens [B, T], position_ids [B, T], attention_mask [B, P + T] (1 = attend), "
    "cache: list of (key, value) buffers [B, heads, C, head_dim] per layer, C >= P + T) -> (logits [B, T, vocab], "
    "the buffers with the new keys/values written at positions P .. P + T - 1, by torch.scatter on axis 2); "
    "optionally `eos_token_id` (generation stops there)."
)


def write(buffer: torch.Tensor, new: torch.Tensor, start: Any) -> torch.Tensor:
    """`buffer` [B, H, C, D] with `new` [B, H, T, D] at positions start .. start + T - 1 of axis 2 (exported as
    ScatterElements, which tensor_scatter_writes rewrites)."""
    index = (torch.arange(new.shape[2], device=new.device) + start)[None, None, :, None].expand(new.shape)
    return buffer.scatter(2, index, new)


@functools.cache
def _layer_class() -> type:
    """A transformers cache layer over one (key, value) buffer pair, written at a start position."""
    from transformers.cache_utils import CacheLayerMixin

    class InPlaceLayer(CacheLayerMixin):
        is_compileable, is_sliding = True, False

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, start: Any) -> None:
            super().__init__()
            self.keys, self.values, self.start, self.is_initialized = keys, values, start, True

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            """Nothing to allocate: the buffers are the graph's inputs."""

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
                   ) -> tuple[torch.Tensor, torch.Tensor]:
            self.keys = write(self.keys, key_states, self.start)
            self.values = write(self.values, value_states, self.start)
            return self.keys, self.values

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.keys.shape[-2], 0  # masks span the whole buffer, at absolute positions

        def get_seq_length(self) -> Any:
            return self.start

        def get_max_length(self) -> int:
            return self.keys.shape[-2]

    return InPlaceLayer


def transformers_cache(cache: list[tuple[torch.Tensor, torch.Tensor]], start: Any) -> Any:
    """A transformers Cache over the buffers that writes each layer's new keys/values at `start`; InputError on a
    transformers without per-layer caches (before 4.56)."""
    try:
        from transformers.cache_utils import Cache, CacheLayerMixin  # noqa: F401  (the layered cache API)
    except ImportError as exc:
        raise InputError("--family gpt-inplace needs transformers' per-layer caches (transformers >= 4.56); upgrade "
                         "transformers or export as 'gpt'.") from exc
    layer = _layer_class()
    return Cache(layers=[layer(key, value, start) for key, value in cache])


WRITE_OPSET = 24  # TensorScatter


def tensor_scatter_writes(path: Path) -> None:
    """Write each cache buffer (ScatterElements into a past_key_values input) with opset 24's TensorScatter at
    position total - seq of every row instead: the same values (the checks compare them with torch's scatter), but
    onnxruntime copies TensorScatter's rows in place as whole rows, where ScatterElements goes element by element
    (1.1 ms a step for a 125M Llama at batch 8, a twentieth of the step)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    writes = {i for i, n in enumerate(graph.node) if n.op_type == "ScatterElements" and n.domain in ("", "ai.onnx")
              and n.input[0].startswith("past_key_values.")}
    if not writes:  # nothing to rewrite: the loop's graph check says what is missing
        return
    k = "deploykit/write/"
    graph.initializer.extend([numpy_helper.from_array(np.asarray(v, np.int64), k + n)
                              for n, v in (("zero", 0), ("one", 1), ("axis0", [0]))])
    index = [
        helper.make_node("Shape", ["attention_mask"], [k + "mask_shape"]),
        helper.make_node("Shape", ["input_ids"], [k + "ids_shape"]),
        helper.make_node("Gather", [k + "mask_shape", k + "one"], [k + "total"], axis=0),
        helper.make_node("Gather", [k + "ids_shape", k + "one"], [k + "seq"], axis=0),
        helper.make_node("Gather", [k + "ids_shape", k + "zero"], [k + "batch"], axis=0),
        helper.make_node("Sub", [k + "total", k + "seq"], [k + "start"]),
        helper.make_node("Unsqueeze", [k + "batch", k + "axis0"], [k + "rows"]),
        helper.make_node("Expand", [k + "start", k + "rows"], [k + "index"]),
    ]
    nodes = [helper.make_node("TensorScatter", [n.input[0], n.input[2], k + "index"], list(n.output), name=n.name,
                              axis=2) if i in writes else n for i, n in enumerate(graph.node)]
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(nodes):  # the ScatterElements' index computations are left unread: drop them
        if any(o in needed for o in node.output) or node.op_type in ("Loop", "If", "Scan"):
            kept.append(node)
            needed |= read_names([node])
    del graph.node[:]
    graph.node.extend([*index, *reversed(kept)])
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = max(entry.version, WRITE_OPSET)
    model.ir_version = max(model.ir_version, helper.find_min_ir_version_for(list(model.opset_import)))
    onnx.save(model, str(path))


def _roles(model: nn.Module) -> dict[str, Role]:
    inputs, outputs, dims = decoder_specs(model, "gpt-inplace", PROTOCOL, "forward_in_place", "capacity")
    example = {"batch": 2, "seq": 3, "past": 4, "total": 7, "capacity": 9}
    return {ROLE: Role(DecoderWithPast(model, "forward_in_place"), inputs, outputs, example, dims,
                       finish=tensor_scatter_writes)}


def _loop(model: nn.Module) -> KVInPlaceConfig:
    return KVInPlaceConfig(role=ROLE, vocab=vocabulary(model, "vocab", "gpt-inplace", PROTOCOL),
                           **decoder_config(model, "gpt-inplace", PROTOCOL, "forward_in_place"),
                           **lm_fields(model, weight_bytes(model)))


register(Family("gpt-inplace", "causal decoder with an in-place KV cache (hf:DIR --family gpt-inplace): each step writes "
                "into one buffer per layer",
                PROTOCOL, _roles, lambda m: decoder_shapes(m, "gpt-inplace", PROTOCOL, "capacity"),
                Tolerance(1e-4, 1e-4), ("kv_in_place",), _loop))  # the gpt family's tolerance: the same arithmetic
