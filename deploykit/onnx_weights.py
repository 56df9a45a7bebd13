"""A graph's weights one tensor at a time, inline or in ONNX external data: read as arrays (external data mapped,
not loaded) and moved into an external-data file as they come. Passes over a whole model (quantize's staging and
its int4 converter, the exporter's sparse weights) then hold one weight in memory, whatever the model weighs.
Needs onnx: converters and the exporter, never a runtime.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.external_data_helper import uses_external_data

from .onnx_refs import EXTERNAL_DATA_THRESHOLD, read_names, subgraphs

ALIGN = 4096  # each tensor starts on a page: onnxruntime can map it instead of copying


def weight_array(tensor: onnx.TensorProto, folder: Path) -> np.ndarray:
    """`tensor`'s values; external data (relative to `folder`) mapped read-only, not loaded."""
    if not uses_external_data(tensor):
        return numpy_helper.to_array(tensor)
    info = {entry.key: entry.value for entry in tensor.external_data}
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    mapped = np.memmap(folder / info["location"], dtype, "r", int(info.get("offset", 0)), (math.prod(tensor.dims),))
    return mapped.reshape(tuple(tensor.dims))


def initializers(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """The initializers of `graph` and of every subgraph it holds (Loop and Scan bodies, If branches)."""
    yield from graph.initializer
    for node in graph.node:
        for sub in subgraphs(node):
            yield from initializers(sub)


def drop_unread(graph: onnx.GraphProto, read: set[str] | None = None) -> None:
    """Remove the initializers of `graph` and its subgraphs that no node reads (subgraphs' reads of outer scopes
    included) nor an output names, and the graph inputs naming them."""
    read = read_names(graph.node) | {o.name for o in graph.output} if read is None else read
    dropped = {t.name for t in graph.initializer if t.name not in read}
    for listed in (graph.initializer, graph.input):
        kept = [t for t in listed if t.name not in dropped]
        del listed[:]
        listed.extend(kept)
    for node in graph.node:
        for sub in subgraphs(node):
            drop_unread(sub, read)


def _location(tensor: onnx.TensorProto) -> str:
    """The external-data file a tensor's values are in."""
    return next(entry.value for entry in tensor.external_data if entry.key == "location")


def _domains(graph: onnx.GraphProto) -> set[str]:
    """The operator domains of `graph`'s nodes and its subgraphs'."""
    return {n.domain for n in graph.node} | {d for n in graph.node for sub in subgraphs(n) for d in _domains(sub)}


def finish_converted(model: onnx.ModelProto, source: Path, target: Path, store: DataFile) -> None:
    """Save a converted `model` at `target`, its new weights already in `store` (target's data file): the
    com.microsoft opset imported if a node (subgraphs included) is one of onnxruntime's contrib ops, initializers no
    node reads dropped, those still in the source's external data (in folder `source`) copied into `store`, and all
    of them folded back inline, `store`'s file removed, when they come to no more than EXTERNAL_DATA_THRESHOLD."""
    if "com.microsoft" in _domains(model.graph) and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    drop_unread(model.graph)
    for tensor in initializers(model.graph):  # what stays as it was (embeddings, norms), from the source's file
        if uses_external_data(tensor) and _location(tensor) != store.path.name:
            store.put(tensor, weight_array(tensor, source))
    if store.handle.tell() <= EXTERNAL_DATA_THRESHOLD:
        for tensor in initializers(model.graph):
            if uses_external_data(tensor):
                array = np.array(weight_array(tensor, target.parent))
                tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
        store.handle.close()
        store.path.unlink()
    onnx.save(model, str(target))


class DataFile:
    """An external-data file written one tensor at a time (a context manager: closed on exit)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = open(path, "wb")

    def __enter__(self) -> DataFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.handle.close()

    def put(self, tensor: onnx.TensorProto, array: np.ndarray) -> None:
        """Append `array` (the values `tensor` stands for, in its dtype and shape) and point `tensor` at them."""
        offset = -self.handle.tell() % ALIGN + self.handle.tell()
        self.handle.seek(offset)
        data = np.ascontiguousarray(array)
        self.handle.write(data)
        self.handle.flush()  # readable through a mapping of this file at once (a tied head's transposed copy)
        for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
            tensor.ClearField(field)
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", self.path.name), ("offset", str(offset)), ("length", str(data.nbytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value

    def tensor(self, name: str, array: np.ndarray) -> onnx.TensorProto:
        """A new initializer `name` holding `array`, its values in this file."""
        tensor = onnx.TensorProto(name=name, data_type=onnx.helper.np_dtype_to_tensor_dtype(array.dtype),
                                  dims=array.shape)
        self.put(tensor, array)
        return tensor
