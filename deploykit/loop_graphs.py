"""Graphs built from a bundle's exported graphs at the ONNX level (onnx only, no torch): a whole sampling loop as one
ONNX Loop, so that a small model's loop costs one `run` instead of one per step plus numpy in between.

`build_loop_graphs` is the one place export and quantize consult: for a loop kind in BUILDERS whose config asks for
it, it writes the loop graph from the (possibly quantized) step graph and returns its manifest entry, marked
`built_from` that role (it has no torch module of its own; parity is the loop check against the torch host loop).

The KV-cache generation graph carries (tokens, positions, mask, cache, done) around the `decoder_with_past` body:
iteration 0 is the prefill, every later one decodes the token picked before it; the pick is `tokens.pick_tokens`
in float64 ONNX ops from the same uniforms, so ORT's loop and the host loop pick the same tokens. The decoder's
weights move into the Loop body, where onnxruntime prepacks them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .onnx_weights import weight_array
from .runtimes.kinds import LoopConfig
from .runtimes.transformer import GENERATE_ROLE, KVCacheConfig
from .specs import GraphSpec, TensorSpec

INT64_MAX = np.iinfo(np.int64).max
# Models up to this many bytes of weights also get their loop as one graph, which carries its own copy of the weights.
# Below it the per-token host glue (~50 us of Python and numpy) is a large share of a step; above it the step is
# milliseconds, the glue ~1 %, and a second copy of the weights in the bundle and in memory would not pay.
IN_GRAPH_MAX_BYTES = 64 << 20


class _Nodes:
    """Appends nodes to a list, naming outputs uniquely under a prefix; constants become initializers."""

    def __init__(self, prefix: str, opset: int) -> None:
        self.prefix, self.opset = prefix, opset
        self.nodes: list[onnx.NodeProto] = []
        self.constants: list[onnx.TensorProto] = []
        self.count = 0

    def __call__(self, op: str, *inputs: str, outputs: int = 1, **attrs: Any) -> Any:
        names = [f"{self.prefix}{op.lower()}_{self.count}_{i}" for i in range(outputs)]
        self.count += 1
        self.nodes.append(helper.make_node(op, list(inputs), names, **attrs))
        return names[0] if outputs == 1 else names

    def const(self, value: Any, dtype: Any) -> str:
        name = f"{self.prefix}const_{len(self.constants)}"
        self.constants.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def reduce(self, op: str, x: str, axis: int, keepdims: int) -> str:
        """Reduce over one axis (axes became an input at opset 18)."""
        if self.opset >= 18:
            return self(op, x, self.const([axis], np.int64), keepdims=keepdims)
        return self(op, x, axes=[axis], keepdims=keepdims)

    def last(self, x: str) -> str:
        """x[:, -1:] (the last column, kept as an axis)."""
        return self("Slice", x, self.const([-1], np.int64), self.const([INT64_MAX], np.int64), self.const([1], np.int64))

    def graph(self, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]) -> onnx.GraphProto:
        return helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.constants)


def _value(name: str, dtype: int, shape: list[Any] | None = None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def _branch(name: str, build: Callable[[_Nodes], str], dtype: int, opset: int) -> onnx.GraphProto:
    """An If branch: nodes reading outer-scope values, one output."""
    nodes = _Nodes(f"{name}/", opset)
    result = build(nodes)
    out = nodes("Identity", result)
    return nodes.graph(name, [], [_value(out, dtype)])


def _pick(n: _Nodes, logits: str, u: str, vocab: int) -> str:
    """Next token per row [rows] int64 from logits [rows, vocab] and uniforms [rows]: tokens.pick_tokens in ONNX.

    Reads the outer inputs temperature [1] (0: greedy), top_k [1] (0: none) and top_p [1] (above 1: none).
    """
    opset = n.opset

    def greedy(b: _Nodes) -> str:
        return b("ArgMax", logits, axis=1, keepdims=0)

    def top_k(b: _Nodes, x: str) -> str:
        values, _ = b("TopK", x, "top_k", outputs=2, axis=1)
        kth = b.last(values)
        return b("Where", b("Less", x, kth), b.const(-np.inf, np.float64), x)

    def top_p(b: _Nodes, p: str) -> str:
        width = b("Slice", b("Shape", p), b.const([1], np.int64), b.const([2], np.int64))
        ordered, order = b("TopK", p, width, outputs=2, axis=1)  # descending; ties keep the lower index first
        before = b("Sub", b("CumSum", ordered, b.const(1, np.int64)), ordered)
        drop_sorted = b("Cast", b("Not", b("Less", before, "top_p")), to=TensorProto.INT64)
        drop = b("ScatterElements", b("Mul", b("Cast", p, to=TensorProto.INT64), b.const(0, np.int64)), order, drop_sorted,
                 axis=1)
        return b("Where", b("Cast", drop, to=TensorProto.BOOL), b.const(0.0, np.float64), p)

    def sampled(b: _Nodes) -> str:
        x = b("Div", b("Cast", logits, to=TensorProto.DOUBLE), "temperature")
        has_k = b("Greater", "top_k", b.const([0], np.int64))
        x = b("If", has_k, then_branch=_branch("top_k", lambda c: top_k(c, x), TensorProto.DOUBLE, opset),
              else_branch=_branch("all_k", lambda c: c("Identity", x), TensorProto.DOUBLE, opset))
        e = b("Exp", b("Sub", x, b.reduce("ReduceMax", x, 1, 1)))
        p = b("Div", e, b.reduce("ReduceSum", e, 1, 1))
        has_p = b("Not", b("Greater", "top_p", b.const([1.0], np.float64)))
        p = b("If", has_p, then_branch=_branch("top_p", lambda c: top_p(c, p), TensorProto.DOUBLE, opset),
              else_branch=_branch("all_p", lambda c: c("Identity", p), TensorProto.DOUBLE, opset))
        cdf = b("CumSum", p, b.const(1, np.int64))
        total = b.last(cdf)
        threshold = b("Mul", b("Unsqueeze", u, b.const([1], np.int64)), total)
        index = b.reduce("ReduceSum", b("Cast", b("Less", cdf, threshold), to=TensorProto.INT64), 1, 0)
        return b("Min", index, b.const(vocab - 1, np.int64))

    is_greedy = n("Equal", "temperature", n.const([0.0], np.float64))
    return n("If", is_greedy, then_branch=_branch("greedy", greedy, TensorProto.INT64, opset),
             else_branch=_branch("sampled", sampled, TensorProto.INT64, opset))


def _sorted(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Nodes in an order where each comes after the nodes making its inputs. onnxruntime sorts a main graph itself
    but not a Loop body, and converters append nodes (fp16's input casts) at the end."""
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    order: list[int] = []
    state = [0] * len(nodes)  # 0 unvisited, 1 placed
    for root in range(len(nodes)):
        stack = [(root, False)]
        while stack:
            i, expanded = stack.pop()
            if state[i]:
                continue
            if expanded:
                state[i] = 1
                order.append(i)
                continue
            stack.append((i, True))
            stack.extend((producer[v], False) for v in nodes[i].input if v in producer and not state[producer[v]])
    return [nodes[i] for i in order]


def densified(graph: onnx.GraphProto, folder: Path) -> None:
    """Turn `graph`'s sparse initializers (their external data relative to `folder`) back into dense ones, in place
    (for passes that read weights as initializers: quantization, the in-graph generation loop)."""
    for sparse in graph.sparse_initializer:
        dense = np.zeros(int(np.prod(sparse.dims)), onnx.helper.tensor_dtype_to_np_dtype(sparse.values.data_type))
        dense[weight_array(sparse.indices, folder)] = weight_array(sparse.values, folder)
        graph.initializer.append(numpy_helper.from_array(dense.reshape(tuple(sparse.dims)), sparse.values.name))
    del graph.sparse_initializer[:]


def _renamed(graph: onnx.GraphProto, names: dict[str, str], prefix: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The graph's nodes and initializers with `names` mapped and every other value name prefixed."""
    def name(value: str) -> str:
        return names.get(value, f"{prefix}{value}") if value else value

    nodes = []
    for node in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [name(v) for v in node.input]
        copy.output[:] = [name(v) for v in node.output]
        copy.name = prefix + node.name
        nodes.append(copy)
    weights = []
    for tensor in graph.initializer:
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        copy.name = name(tensor.name)
        weights.append(copy)
    return _sorted(nodes), weights


def build_kv_generation(decoder: Path, out: Path, loop: KVCacheConfig) -> tuple[GraphSpec, int]:
    """Write the whole generation loop over `decoder` (a decoder_with_past graph) to `out`; its spec and opset."""
    model = onnx.load(str(decoder))
    densified(model.graph, decoder.parent)  # the loop body holds the weights as constants
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    vocab = len(loop.vocab)
    past = [f"past_key_values.{i}.{p}" for i in range(loop.layers) for p in ("key", "value")]
    carried = ["ids", "positions", "mask", *(f"carry/{p}" for p in past), "done"]
    decoder_nodes, weights = _renamed(model.graph, {
        "input_ids": "ids", "position_ids": "positions", "attention_mask": "mask",
        **{p: f"carry/{p}" for p in past}, "logits": "step_logits",
        **{p.replace("past_key_values", "present"): f"next/{p}" for p in past}}, "decoder/")

    # Loop body: (iteration, condition, *carried) -> (condition, *carried, token)
    body = _Nodes("body/", opset)
    body.nodes.extend(decoder_nodes)
    logits = body("Squeeze", body.last("step_logits"), body.const([1], np.int64))
    u = body("Gather", "uniforms", "iteration", axis=0)
    token = _pick(body, logits, u, vocab)
    hit = body.reduce("ReduceMax", body("Cast", body("Equal", body("Unsqueeze", token, body.const([1], np.int64)), "stop"),
                                        to=TensorProto.INT64), 1, 0)
    done = body("Or", "done", body("Cast", hit, to=TensorProto.BOOL))
    going = body("Not", body("Cast", body.reduce("ReduceMin", body("Cast", done, to=TensorProto.INT64), 0, 0),
                             to=TensorProto.BOOL))
    next_ids = body("Unsqueeze", token, body.const([1], np.int64))
    next_positions = body("Add", body.last("positions"), body.const(1, np.int64))
    column = body("ConstantOfShape", body("Shape", next_ids), value=numpy_helper.from_array(np.ones(1, np.int64)))
    next_mask = body("Concat", "mask", column, axis=1)
    token_out = body("Identity", token)
    body.constants.extend(weights)  # only the body reads them: onnxruntime prepacks them for its kernels
    body_graph = body.graph(
        "generation_step",
        [_value("iteration", TensorProto.INT64, []), _value("condition", TensorProto.BOOL, []),
         *(_value(c, TensorProto.BOOL if c == "done" else TensorProto.INT64 if c in ("ids", "positions", "mask")
                  else TensorProto.FLOAT) for c in carried)],
        [_value(going, TensorProto.BOOL, []), _value(next_ids, TensorProto.INT64), _value(next_positions, TensorProto.INT64),
         _value(next_mask, TensorProto.INT64), *(_value(f"next/{p}", TensorProto.FLOAT) for p in past),
         _value(done, TensorProto.BOOL), _value(token_out, TensorProto.INT64)])

    # Outer graph: an empty cache, no row done, one iteration per uniform row
    outer = _Nodes("", opset)
    batch = outer("Slice", outer("Shape", "input_ids"), outer.const([0], np.int64), outer.const([1], np.int64))
    cache_shape = outer("Concat", batch, outer.const([loop.heads, 0, loop.head_dim], np.int64), axis=0)
    empty = outer("ConstantOfShape", cache_shape, value=numpy_helper.from_array(np.zeros(1, np.float32)))
    not_done = outer("ConstantOfShape", batch, value=numpy_helper.from_array(np.zeros(1, bool)))
    steps = outer("Squeeze", outer("Slice", outer("Shape", "uniforms"), outer.const([0], np.int64), outer.const([1], np.int64)),
                  outer.const([0], np.int64))
    results = outer("Loop", steps, "", "input_ids", "position_ids", "attention_mask", *(empty for _ in past), not_done,
                    outputs=len(carried) + 1, body=body_graph)
    outer("Transpose", results[-1], perm=[1, 0])
    outer.nodes[-1].output[0] = "tokens"
    spec = GraphSpec(
        inputs=(
            TensorSpec("input_ids", "int64", ("batch", "seq"), high=vocab),
            TensorSpec("position_ids", "int64", ("batch", "seq"), high=loop.context),
            TensorSpec("attention_mask", "int64", ("batch", "seq"), high=2),
            TensorSpec("uniforms", "float64", ("steps", "batch"), low=0, high=1),
            TensorSpec("temperature", "float64", (1,), low=0),
            TensorSpec("top_k", "int64", (1,), low=0, high=vocab + 1),
            TensorSpec("top_p", "float64", (1,), low=0),
            TensorSpec("stop", "int64", ("stops",), low=-1, high=vocab),
        ),
        outputs=(TensorSpec("tokens", "int64", ("batch", "generated")),),
    )
    graph = outer.graph(GENERATE_ROLE, [_value(s.name, _DTYPES[s.dtype], list(s.shape)) for s in spec.inputs],
                        [_value("tokens", TensorProto.INT64, ["batch", "generated"])])
    built = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name="deploykit")
    built.ir_version = model.ir_version
    onnx.save(built, str(out))
    return spec, opset


_DTYPES = {"int64": TensorProto.INT64, "float64": TensorProto.DOUBLE}

# loop kind -> (role it builds, role it is built from, builder)
BUILDERS: dict[str, tuple[str, str, Callable[[Path, Path, Any], tuple[GraphSpec, int]]]] = {
    KVCacheConfig.kind: (GENERATE_ROLE, "decoder_with_past", build_kv_generation),
}


def build_loop_graphs(loop: LoopConfig, graphs: Path) -> dict[str, dict[str, Any]]:
    """Role -> manifest entry of every loop graph this loop asks for, written under `graphs` from the step graph there."""
    if loop.kind not in BUILDERS or not getattr(loop, "in_graph", False):
        return {}
    role, source, build = BUILDERS[loop.kind]
    spec, opset = build(graphs / f"{source}.onnx", graphs / f"{role}.onnx", loop)
    return {role: {"file": f"graphs/{role}.onnx", "opset": opset, "spec": spec.to_json(), "built_from": source}}
