"""torch -> ONNX for one role: prepare the module, export with torch.onnx (dynamo), check, infer shapes."""

from __future__ import annotations

import copy
import inspect
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn
from torch.nn.utils import parametrize

from ..checks import release_memory
from ..errors import ExportError
from ..onnx_refs import read_names, subgraphs, varint
from ..onnx_weights import initializers, weight_array
from ..specs import DimRule, GraphSpec, TensorSpec
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


def _folds(model: nn.Module) -> bool:
    """Whether `model` has parametrizations or legacy weight norm that export must fold into plain weights."""
    return any(parametrize.is_parametrized(m) or any(type(h).__name__ == "WeightNorm" for h in m._forward_pre_hooks.values())
               for m in model.modules())


@contextmanager
def exportable(model: nn.Module) -> Iterator[nn.Module]:
    """`model` ready to export: eval mode, no gradients, parametrizations folded.

    A copy (`prepare`) only when there is something to fold; otherwise the module itself, with its
    training flags and requires_grad restored afterwards, so a 100M+ model is not held twice."""
    if _folds(model):
        yield prepare(model)
        return
    training = {m: m.training for m in model.modules()}
    grads = {p: p.requires_grad for p in model.parameters()}
    model.eval().requires_grad_(False)
    try:
        yield model
    finally:
        for module, flag in training.items():
            module.training = flag
        for param, flag in grads.items():
            param.requires_grad_(flag)


def example_inputs(role: Role) -> tuple[torch.Tensor, ...]:
    """Deterministic example tensors at the role's example dims."""
    rng = np.random.default_rng(0)
    return tuple(torch.from_numpy(s.random(rng, role.example)) for s in role.inputs)


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
SUMMARY = re.compile(r"## Exception summary\s*(.*?)(?:\n\s*\n|$)", re.S)
SUMMARY_CLASS = re.compile(r"<class '(?:[\w]+\.)*(\w+)'>")
SUMMARY_NOISE = re.compile(r"For more information, run with TORCH_LOGS=\S+ ?")
USER_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(.*)')


def first_line(exc: BaseException) -> str:
    """'Type: the first line of its message' (colour codes stripped, 300 characters at most), for wrapping a library's
    exception in ours."""
    text = ANSI.sub("", str(exc)).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__
LIBRARY = tuple(f"{Path(p).parent}{os.sep}" for p in (torch.__file__, onnx.__file__, Path(__file__).parent.parent / "x"))


@contextmanager
def _output_to(log: Path) -> Iterator[None]:
    """Send everything written to the process's stdout and stderr (torch's graph dumps included) to `log`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "a") as handle, redirect_stdout(handle), redirect_stderr(handle):
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        try:
            yield
        finally:
            handle.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes, outermost first."""
    seen: list[BaseException] = [exc]
    while (nxt := seen[-1].__cause__ or seen[-1].__context__) is not None and nxt not in seen:
        seen.append(nxt)
    return seen


def _user_frame(chain: list[BaseException]) -> str:
    """'file:line in function: code' of the innermost frame outside torch, onnx and deploykit, or ''."""
    found = ""
    for exc in chain:  # frames torch quotes in its messages ("The following call raised this error")
        for path, line, func, code in USER_FRAME.findall(ANSI.sub("", str(exc))):
            if not path.startswith(LIBRARY) and "site-packages" not in path:
                found = f"{path}:{line} in {func}: {code.strip()}"
    if found:
        return found
    tb = chain[-1].__traceback__
    while tb is not None:  # else the innermost traceback frame in the user's files
        path = tb.tb_frame.f_code.co_filename
        if not path.startswith(LIBRARY) and "site-packages" not in path and not path.startswith("<"):
            found = f"{path}:{tb.tb_lineno} in {tb.tb_frame.f_code.co_name}"
        tb = tb.tb_next
    return found


def export_failure(name: str, module: nn.Module, exc: BaseException, log: Path) -> ExportError:
    """ExportError for a failed torch.onnx export: the deepest cause's first line (no ANSI codes), the user's
    file:line where torch points at one, and the log holding torch's full output."""
    chain = _chain(exc)
    summary = SUMMARY.search(ANSI.sub("", str(chain[0])))
    if summary:  # torch.onnx's own account of torch.export's error; deeper links are its fallbacks failing after it
        text = " ".join(ln.strip(" -") for ln in summary.group(1).splitlines() if ln.strip())
        cause = SUMMARY_NOISE.sub("", SUMMARY_CLASS.sub(r"\1", text))[:500]
    else:
        lines = [ln.strip() for ln in ANSI.sub("", str(chain[-1])).splitlines() if ln.strip()]
        cause = f"{type(chain[-1]).__name__}: {lines[0][:300]}" if lines else type(chain[-1]).__name__
    where = _user_frame(chain)
    return ExportError(
        f"torch.onnx could not export role '{name}' of {type(module).__name__}: {cause}"
        + (f"\n  at {where}" if where else "")
        + f"\n  torch's full output: {log}. Check that forward() has no data-dependent Python control flow on "
        "tensor values (see https://pytorch.org/docs/stable/generated/exportdb/index.html)."
    )


def _output_specs(model: onnx.ModelProto) -> tuple[TensorSpec, ...]:
    specs = []
    for out in model.graph.output:
        t = out.type.tensor_type
        dims = tuple(d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim)
        specs.append(TensorSpec(out.name, _ONNX_DTYPES.get(t.elem_type, str(t.elem_type)), dims))
    return tuple(specs)


def weight_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (shared tensors once)."""
    tensors = {id(t): t for t in (*module.parameters(), *module.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _export_dims(role: Role) -> dict[str, Any]:
    """One torch.export Dim per declared dim name, shared by every input that names it, with the DimRule's bounds;
    a dim that must be a multiple of k is k * Dim (so h // k and h % k == 0 are facts, not guards). A sum of dims
    (`total = past + seq`) is left for torch.export to infer (Dim.AUTO): its derived dims are linear in one dim.

    torch.onnx keeps its fallback (draft export) for code whose guards a strict Dim rejects though the graph is
    right, e.g. diffusers' `if batch >= 64: x = x.contiguous()`; a graph that really is fixed to the example size
    is then caught by the check shapes (a model failing at one is an ExportError naming the shape)."""
    names = {d for s in role.inputs for d in s.shape if isinstance(d, str)}
    dims: dict[str, Any] = {}
    for name in names:
        rule = role.dims.get(name, DimRule())
        if rule.sum_of:
            dims[name] = torch.export.Dim.AUTO
        elif rule.multiple_of > 1:
            top = None if rule.max is None else rule.max // rule.multiple_of
            dims[name] = rule.multiple_of * torch.export.Dim(f"{name}_over_{rule.multiple_of}",
                                                             min=max(1, -(-rule.min // rule.multiple_of)), max=top)
        else:
            dims[name] = torch.export.Dim(name, min=rule.min, max=rule.max)
    return dims


@contextmanager
def _linear_rewrites() -> Iterator[None]:
    """While torch.onnx optimizes the graph: onnxscript's default rewrite rules without those whose pattern has
    several output nodes (SlicesSplit: two Slices of one tensor -> Split). Their matcher tries every node of the
    graph with each candidate node (brute force, by onnxscript's own account), so its cost grows with the square of
    the graph: 0.9 / 3.2 / 12.5 / 55 CPU-s exporting a Llama of 6 / 12 / 24 / 48 layers, 45 % of the 48-layer
    export, for a rule that fired on none of them. Rewrites only simplify, so the graph computes the same without it.
    Where onnxscript keeps its rules elsewhere this changes nothing."""
    import onnxscript.rewriter as rewriter

    rules = getattr(rewriter, "_DEFAULT_REWRITE_RULES", None)
    if rules is None:
        yield
        return
    rewriter._DEFAULT_REWRITE_RULES = tuple(
        r for r in rules if getattr(getattr(r, "_target_pattern", None), "has_single_output_node", True))
    try:
        yield
    finally:
        rewriter._DEFAULT_REWRITE_RULES = rules


@dataclass(frozen=True)
class Exported:
    """One role's graph on disk: its spec, opset and external-data files (relative to the graph's folder)."""

    spec: GraphSpec
    opset: int
    data_files: list[str]


def export_role(name: str, role: Role, path: Path, opset: int = OPSET) -> Exported:
    """Export one role to `path` (outputs read back from the graph into its spec).

    Weights always go to external data first: torch.onnx then streams them to disk one tensor at a time instead of
    building the whole protobuf (and its serialization) in memory; the export's checks then run onnxruntime on
    that file, which maps the data instead of copying it. `inline_external_data` folds them back when the graph
    should be one file. The checker and shape inference run on the file, so graphs over protobuf's 2 GB limit work too."""
    symbols = _export_dims(role)
    dynamic = tuple({i: symbols[d] for i, d in enumerate(s.shape) if isinstance(d, str)} for s in role.inputs)
    params = inspect.signature(role.module.forward).parameters.values()
    fixed = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
    if any(p.kind == p.VAR_POSITIONAL for p in params) and len(dynamic) > fixed:  # forward(a, *rest): rest as one tuple
        dynamic = (*dynamic[:fixed], dynamic[fixed:])
    for noisy in ("torch.onnx", "onnx_ir", "onnxscript"):  # progress chatter and benign warnings
        logging.getLogger(noisy).setLevel(logging.ERROR)
    fd, log_name = tempfile.mkstemp(prefix=f"deploykit-export-{name}-", suffix=".log")
    os.close(fd)
    log = Path(log_name)
    try:
        with warnings.catch_warnings(), _output_to(log), _linear_rewrites():
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
        with open(log, "a") as handle:
            handle.write("\n".join(ANSI.sub("", f"{type(e).__name__}: {e}") for e in _chain(exc)) + "\n")
        raise export_failure(name, role.module, exc, log) from exc
    log.unlink()
    _strip_metadata(program.model)
    _gemm_transposed_weights(program.model)
    program.save(str(path), external_data=True)
    del program
    release_memory()
    _localize_loop_weights(path)
    if role.finish is not None:
        role.finish(path)
    try:
        onnx.checker.check_model(str(path), full_check=True)
        onnx.shape_inference.infer_shapes_path(str(path), str(path), check_type=True, strict_mode=True)
    except Exception as exc:
        raise ExportError(f"exported graph for role '{name}' failed the ONNX checker: {exc}") from exc
    sparse_initializers(path)  # after the checks: onnx's type inference has no sparse inputs for Gemm, Conv, ...
    model = onnx.load(str(path), load_external_data=False)
    spec = GraphSpec(role.inputs, _output_specs(model), role.dims)
    opset_found = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    data_files = sorted({entry.value for tensor in initializers(model.graph) for entry in tensor.external_data
                         if entry.key == "location"})
    unused = path.with_name(path.name + ".data")  # torch keeps tensors under 1 KiB inline: the file may hold none
    if unused.name not in data_files:
        unused.unlink(missing_ok=True)
    return Exported(spec, int(opset_found), data_files)


def _field(number: int, size: int) -> bytes:
    """Tag and length of a length-delimited protobuf field."""
    return varint(number << 3 | 2) + varint(size)


GRAPH_FIELD, INITIALIZER_FIELD, RAW_DATA_FIELD = 7, 5, 9  # ModelProto.graph, GraphProto.initializer, TensorProto.raw_data
CHUNK = 16 << 20


def inline_external_data(path: Path) -> None:
    """Rewrite `path` as one self-contained ONNX file and delete its external-data files, streaming: the top-level
    initializers are written field by field (protobuf takes fields in any order) with their bytes copied from the
    data file in chunks, so memory stays at the graph's structure plus one chunk, whatever the weights weigh."""
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

    release_memory()  # what the export's checks freed goes back to the OS first: this runs at the export's peak
    model = onnx.load(str(path), load_external_data=False)
    folder = path.parent
    files = {entry.value for t in initializers(model.graph) for entry in t.external_data if entry.key == "location"}
    nested = [t for node in model.graph.node for sub in subgraphs(node) for t in initializers(sub)]
    for tensor in nested:  # subgraph (Scan body) weights: inline in place
        if uses_external_data(tensor):
            load_external_data_for_tensor(tensor, str(folder))
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
    streamed, kept = [], []
    for tensor in model.graph.initializer:
        (streamed if uses_external_data(tensor) else kept).append(tensor)
    pieces = []  # (header bytes, data file, offset, length) per streamed initializer
    for tensor in streamed:
        info = {entry.key: entry.value for entry in tensor.external_data}
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else (folder / info["location"]).stat().st_size - offset
        meta = onnx.TensorProto()
        meta.CopyFrom(tensor)
        meta.ClearField("external_data")
        meta.ClearField("data_location")
        head = meta.SerializeToString() + _field(RAW_DATA_FIELD, length)
        pieces.append((_field(INITIALIZER_FIELD, len(head) + length) + head, folder / info["location"], offset, length))
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    graph = model.graph.SerializeToString()
    model.ClearField("graph")
    size = len(graph) + sum(len(head) + length for head, _, _, length in pieces)
    tmp = path.with_name(path.name + ".inline")
    with open(tmp, "wb") as out:
        out.write(model.SerializeToString() + _field(GRAPH_FIELD, size) + graph)
        for head, data, offset, length in pieces:
            out.write(head)
            with open(data, "rb") as handle:
                handle.seek(offset)
                while length:
                    chunk = handle.read(min(CHUNK, length))
                    if not chunk:
                        raise ExportError(f"external data file {data.name} ends early; the export is incomplete.")
                    out.write(chunk)
                    length -= len(chunk)
    os.replace(tmp, path)
    for name in files:
        (folder / name).unlink(missing_ok=True)


SPARSE_MIN_BYTES = 4096  # smaller tensors stay dense: the saving would not pay for the indices' header


def _stored_sparse(array: np.ndarray) -> bool:
    """Whether a weight takes fewer bytes as an ONNX sparse tensor (values + int64 indices: itemsize + 8 bytes per
    nonzero) than dense, by at least a fifth: a float32 weight from about 73 % zeros on (a pruned one)."""
    nonzero = int(np.count_nonzero(array))
    return array.nbytes >= SPARSE_MIN_BYTES and nonzero * (array.itemsize + 8) <= 0.8 * array.nbytes


def sparse_initializers(path: Path) -> None:
    """Store the top-level float weights of the graph at `path` that are mostly zeros (pruned) as ONNX sparse
    initializers, which onnxruntime densifies at session start: the size gain of pruning is real on disk (not in
    memory or speed). The graph is rewritten only when some weight qualifies; the zeros are counted on the data file,
    mapped, not loaded. The export's parity checks then run on this stored form."""
    from onnx import numpy_helper
    from onnx.external_data_helper import load_external_data_for_model


    model = onnx.load(str(path), load_external_data=False)
    sparse = {}
    for init in model.graph.initializer:
        floats = init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
        if floats and _stored_sparse(weight_array(init, path.parent)):
            sparse[init.name] = init
    if not sparse:
        return
    load_external_data_for_model(model, str(path.parent))
    kept = [init for init in model.graph.initializer if init.name not in sparse]
    for name, init in sparse.items():
        flat = numpy_helper.to_array(init).ravel()
        indices = np.flatnonzero(flat).astype(np.int64)
        model.graph.sparse_initializer.append(onnx.helper.make_sparse_tensor(
            numpy_helper.from_array(flat[indices], name), numpy_helper.from_array(indices, f"{name}.indices"),
            list(init.dims)))
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    for listed in (model.graph.value_info, model.graph.input):  # a dense type recorded for the weight would clash
        values = [v for v in listed if v.name not in sparse]
        del listed[:]
        listed.extend(values)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)  # in memory now; onnx appends to an existing data file
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name,
                    size_threshold=1024)


def _strip_metadata(model: Any) -> None:
    """Drop the per-node debug metadata torch.onnx records (FX nodes and stack traces: ~50 KB per node inside a
    scan body, 17x the weights of a small U-Net's sampler); the graphs run the same without it."""
    import onnx_ir as ir

    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        node.metadata_props.clear()


def _gemm_transposed_weights(model: Any) -> None:
    """Make every MatMul by a transposed 2-D weight W read W as torch stores it, through Gemm(x, W, transB=1)
    (x flattened to 2-D and the product reshaped back). torch.onnx writes nn.Linear weights as W.T: a Transpose
    node where W has another reader (a tied LM head: the embedding's Gather reads wte too), which onnxruntime folds
    into a transposed copy at every session start (GPT-2 124M: 147 MiB more, at export and at each load), and
    otherwise a folded initializer that is a transposed view of the torch tensor, which the file stores as a copy.
    Stored as W, the file holds the torch tensors' own bytes: the export's checks hand onnxruntime those tensors."""
    import onnx_ir as ir

    graph = model.graph
    for node in list(graph):
        weight = node.inputs[0] if node.op_type == "Transpose" and node.domain in ("", "ai.onnx") else None
        perm = node.attributes.get("perm")
        if (weight is not None and weight.is_initializer() and weight.const_value is not None
                and len(weight.const_value.shape) == 2 and (perm is None or list(perm.as_ints()) == [1, 0])
                and _only_matmul_weight(node.outputs[0], graph)):
            _as_gemm(graph, node.outputs[0], weight)
            graph.remove(node, safe=True)
    for value in list(graph.initializers.values()):
        array = value.const_value.numpy() if value.const_value is not None else None
        if (array is not None and array.ndim == 2 and not array.flags.c_contiguous and array.T.flags.c_contiguous
                and _only_matmul_weight(value, graph)):
            value.const_value = ir.tensor(array.T, name=value.name)
            value.shape = ir.Shape(array.T.shape)
            _as_gemm(graph, value, value)


def _only_matmul_weight(value: Any, graph: Any) -> bool:
    """Whether every reader of `value` is a MatMul of `graph` (not of a loop body) taking it as its right operand,
    and it is no graph output."""
    uses = value.uses()
    return bool(uses) and not value.is_graph_output() and all(
        u.node.op_type == "MatMul" and u.idx == 1 and u.node.graph is graph for u in uses)


def _as_gemm(graph: Any, transposed: Any, weight: Any) -> None:
    """Replace each MatMul(x, `transposed`) by Gemm over `weight` (N, K), whose transpose `transposed` is."""
    import onnx_ir as ir

    rows, cols = weight.const_value.shape
    for matmul in {u.node for u in transposed.uses()}:
        x, product = matmul.inputs[0], matmul.outputs[0]
        if x.shape is not None and x.shape.rank() == 2:
            nodes = [ir.node("Gemm", [x, weight], {"transB": 1})]
        else:  # (..., K) -> (M, K) -> Gemm -> (..., N)
            size = ir.node("Constant", [], {"value": ir.tensor(np.array([rows], np.int64))})
            lead = ir.node("Shape", [x], {"end": -1})
            flat = ir.node("Flatten", [x], {"axis": -1})
            gemm = ir.node("Gemm", [flat.outputs[0], weight], {"transB": 1})
            shape = ir.node("Concat", [lead.outputs[0], size.outputs[0]], {"axis": 0})
            nodes = [size, lead, flat, gemm, shape, ir.node("Reshape", [gemm.outputs[0], shape.outputs[0]])]
        result = nodes[-1].outputs[0]
        result.dtype, result.shape = product.dtype, product.shape
        graph.insert_before(matmul, nodes)
        product.replace_all_uses_with(result, replace_graph_outputs=True)
        result.name = product.name
        graph.remove(matmul, safe=True)


def _localize_loop_weights(path: Path) -> None:
    """Move initializers that only a Scan/Loop body reads into that body. onnxruntime prepacks (and lays out for
    its fast kernels) only a subgraph's own initializers, not outer-scope ones: the zoo DDPM's DDIM-50 sampler
    ran 2.2x slower than the host loop over the same network before, and slightly faster after. External-data
    references move with their tensors (the data file is untouched)."""
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    loops = [node for node in graph.node if subgraphs(node)]
    if not loops:
        return
    outer = {i for node in graph.node for i in node.input} | {o.name for o in graph.output}
    owners: dict[str, list[onnx.GraphProto]] = {}
    for node in loops:
        for sub in subgraphs(node):
            for name in read_names(sub.node):
                owners.setdefault(name, []).append(sub)
    moved = set()
    for tensor in graph.initializer:
        subs = owners.get(tensor.name, [])
        if tensor.name not in outer and len(subs) == 1:
            subs[0].initializer.append(tensor)
            moved.add(tensor.name)
    if moved:
        kept = [t for t in graph.initializer if t.name not in moved]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        onnx.save(model, str(path))
