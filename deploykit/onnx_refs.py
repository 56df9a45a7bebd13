"""External-data references of an ONNX file, read straight from the protobuf wire format (no `onnx` import).

Loading a bundle must not pay for `import onnx` (seconds, mostly its ml_dtypes extension) just to
check where a graph's tensors live. This walks ModelProto -> graphs -> tensors (initializers,
node attributes, subgraphs, functions), skipping every payload by its length, over an mmap of the
file, so it stays cheap for graphs of any size. Field numbers are those of onnx.proto3. Also, over loaded protos
(duck-typed, still no import): a node's subgraphs and the value names nodes read.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
# Graphs whose weights exceed this (bytes) keep them in a `<graph>.onnx.data` file. onnxruntime then maps them
# instead of parsing and copying an inline message, and quantize reads them one at a time: loading a model of this
# size or larger stays near one copy of its weights. Below it a graph is one self-contained file.
EXTERNAL_DATA_THRESHOLD = 64 << 20
# message -> {field number: the message it holds} for the fields that can lead to a tensor
_MODEL = {7: "graph", 25: "function"}
_GRAPH = {1: "node", 5: "tensor", 15: "sparse"}
_FUNCTION = {7: "node"}
_NODE = {5: "attribute"}
_ATTRIBUTE = {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"}
_SPARSE = {1: "tensor", 2: "tensor"}
CHILDREN = {"model": _MODEL, "graph": _GRAPH, "function": _FUNCTION, "node": _NODE, "attribute": _ATTRIBUTE,
            "sparse": _SPARSE}


class ProtobufError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def varint(value: int) -> bytes:
    """A non-negative integer as a protobuf (LEB128) varint."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def read_varint(data: memoryview, pos: int) -> tuple[int, int]:
    """The varint at `pos` and the position after it; ProtobufError when it is cut or longer than 64 bits."""
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ProtobufError("truncated or malformed varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(data: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of one message: ints for varints, views for length-delimited fields."""
    pos = 0
    while pos < len(data):
        tag, pos = read_varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = read_varint(data, pos)
            yield number, wire, value
        elif wire == 2:
            size, pos = read_varint(data, pos)
            if pos + size > len(data):
                raise ProtobufError("a length-delimited field runs past the end")
            yield number, wire, data[pos : pos + size]
            pos += size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ProtobufError(f"wire type {wire} (field {number}) is not valid here")
    if pos != len(data):
        raise ProtobufError("a fixed-size field runs past the end")


def _tensor_location(data: memoryview) -> str | None:
    """The external-data `location` of a TensorProto stored externally, else None."""
    external, location = False, ""
    for number, wire, value in _fields(data):
        if number == 14 and wire == 0:
            external = value == EXTERNAL
        elif number == 13 and wire == 2:
            entry = dict((n, bytes(v).decode("utf-8", "replace")) for n, w, v in _fields(value) if w == 2)
            if entry.get(1) == "location":
                location = entry.get(2, "")
    return location if external else None


def _walk(data: memoryview, message: str) -> Iterator[str]:
    for number, wire, value in _fields(data):
        child = CHILDREN[message].get(number)
        if child is None or wire != 2:
            continue
        if child == "tensor":
            location = _tensor_location(value)
            if location is not None:
                yield location
        else:
            yield from _walk(value, child)


def _parse_file(path: Path, parse: Callable[[memoryview], T]) -> T:
    """`parse` over an mmap of the file at `path`; the map closes once parse has returned (its views gone)."""
    with open(path, "rb") as handle:
        if handle.seek(0, 2) == 0:
            raise ProtobufError("the file is empty")
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    problem = ""
    try:
        found = parse(memoryview(mapped))
    except ProtobufError as exc:  # raised again below, once the views into the map are gone
        problem = str(exc)
    mapped.close()
    if problem:
        raise ProtobufError(problem)
    return found


def external_locations(path: Path) -> list[str]:
    """The external-data locations (relative paths as written) of every tensor in the ONNX file at `path`."""
    return _parse_file(path, lambda model: list(_walk(model, "model")))


@dataclass(frozen=True)
class NodeInfo:
    """What a check needs of one node of a graph: its operator, name, inputs, outputs and every value it reads,
    its subgraphs' outer-scope reads included."""

    op_type: str
    domain: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    reads: frozenset[str]


def _text(value: memoryview) -> str:
    return bytes(value).decode("utf-8", "replace")


def _node_info(data: memoryview) -> NodeInfo:
    strings: dict[int, list[str]] = {1: [], 2: [], 3: [], 4: [], 7: []}  # input, output, name, op_type, domain
    inner: set[str] = set()
    for number, wire, value in _fields(data):
        if wire == 2 and number in strings:
            strings[number].append(_text(value))
        elif wire == 2 and number == 5:  # an attribute: its graph (g) or graphs
            inner |= {name for n, w, v in _fields(value) if w == 2 and n in (6, 11) for name in _graph_reads(v)}
    inputs = tuple(strings[1])
    return NodeInfo("".join(strings[4]), "".join(strings[7]), "".join(strings[3]), inputs, tuple(strings[2]),
                    frozenset(inputs) | inner)


def _graph_reads(data: memoryview) -> set[str]:
    return {name for number, wire, value in _fields(data) if number == 1 and wire == 2
            for name in _node_info(value).reads}


def graph_nodes(path: Path) -> tuple[list[str], list[NodeInfo]]:
    """The input names and the nodes of the main graph of the ONNX file at `path`, read from the wire format over an
    mmap (no `onnx` import, nothing of the weights copied)."""
    return _parse_file(path, _main_graph)


def _main_graph(model: memoryview) -> tuple[list[str], list[NodeInfo]]:
    """graph_nodes over the bytes of a ModelProto (its views end with this call)."""
    inputs, nodes = [], []
    for number, wire, graph in _fields(model):
        if number == 7 and wire == 2:  # ModelProto.graph
            for field, kind, value in _fields(graph):
                if kind == 2 and field == 1:
                    nodes.append(_node_info(value))
                elif kind == 2 and field == 11:  # a ValueInfoProto: its name is field 1
                    inputs.extend(_text(v) for n, w, v in _fields(value) if n == 1 and w == 2)
    return inputs, nodes


def subgraphs(node: Any) -> list[Any]:
    """The GraphProtos a NodeProto holds (Loop / Scan bodies, If branches)."""
    return [g for attr in node.attribute for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)]


def read_names(nodes: Iterable[Any]) -> set[str]:
    """Every value name `nodes` read, their subgraphs' outer-scope reads included."""
    names: set[str] = set()
    for node in nodes:
        names.update(node.input)
        for sub in subgraphs(node):
            names |= read_names(sub.node)
    return names
