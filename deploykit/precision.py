"""quantize: write a new bundle whose graphs run in fp16, int8 or int4 (weight-only), with tolerances from the
measured error.

Uses onnxruntime's float16 conversion, its static QDQ quantizer (calibrated by `int8.py`), and deploykit's own
streaming converters over onnxruntime's kernels for int8-dynamic (`int8.py`, the graph onnxruntime's dynamic
quantizer writes) and int4 (`int4.py`, MatMulNBits); needs onnx and onnxruntime only, no torch. The source bundle
is never touched. Golden vectors (the torch outputs) are kept, so `verify` compares the quantized graphs with
torch; the tolerance becomes max(family atol, 2 x the worst error measured on the golden cases at quantization),
recorded in the manifest with the mode, so a deployment drifting beyond what was accepted still fails.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import int4
from .api import load
from .backends.ort import OrtRunner
from .bundle import LOOP_ROLE, Bundle, carry_over, load_bundle, write_bundle
from .checks import check_int, release_memory
from .errors import BundleError, InputError, choices, optional_import
from .int4 import Int4Options
from .onnx_refs import read_names
from .parity import ParityReport, Tolerance
from .runtimes.kinds import kind_of
from .runtimes.tokens import generate, log_softmax, mode_config
from .specs import GraphSpec

if TYPE_CHECKING:
    from .onnx_weights import DataFile

Labelled = tuple[np.ndarray, np.ndarray]  # held-out inputs of a classifier's first graph input, their labels


def accuracy_change(source: Bundle, quantized: Bundle, labelled: Labelled | None = None, n: int = 64
                    ) -> list[dict[str, Any]]:
    """What lower precision costs in user terms, measured on the two bundles (no torch).

    Classifiers: accuracy on `labelled` data when given (the CLI passes the zoo's test split for
    zoo classifiers), else top-1 agreement with fp32 on random inputs. Language models: next-token agreement and
    perplexity on text the fp32 model samples, and greedy tokens kept equal. Encoder-decoders: greedy decodings kept
    equal. Sampling loops: the same seeded samples from both, mean and max abs difference. Densities (flows, masked
    autoregressive models): mean NLL of the fp32 model's own samples under each bundle. The bundles are loaded one
    after the other (the fp32 one first: what the quantized one is measured on comes from it), so the peak memory is
    one bundle's sessions, not both.
    """
    with load(source.path) as full:
        reference = _observe(full, source, labelled, n, None)
    with load(quantized.path) as low:
        observed = _observe(low, source, labelled, n, reference)
    return _rows(reference, observed)


def _observe(d: Any, source: Bundle, labelled: Labelled | None, n: int, reference: dict[str, Any] | None
             ) -> dict[str, Any]:
    """What accuracy_change compares, measured on one loaded bundle; `reference` is the fp32 bundle's observations
    (None while observing it), whose samples and text the quantized bundle is measured on."""
    seen: dict[str, Any] = {}
    kind = kind_of(source.loop)
    logits = [r for r, g in source.graphs.items() if "logits" in g.spec.output_names()]
    if logits and kind.use == "graphs":  # classifiers; PixelCNN's and LMs' logits belong to their loops
        role = logits[0]
        spec = source.graphs[role].spec
        axis = spec.class_axis("logits")  # [batch, classes], or a masked LM's [batch, seq, vocab]
        if labelled is not None:
            top = d.infer({spec.inputs[0].name: labelled[0]}, role)["logits"].argmax(axis)
            seen["accuracy"] = (float((top == labelled[1]).mean()), len(labelled[1]))
        else:
            feeds = spec.random_inputs(np.random.default_rng(0), source.check_shapes[0] | {"batch": 256})
            seen["top"] = d.infer(feeds, role)["logits"].argmax(axis)
    if kind.use == "generate":
        seen["lm"] = _language_model_observations(d, None if reference is None else reference["lm"])
    if kind.use == "translate":
        seen["translations"] = _translations(d)
    if kind.sample is not None:  # a short run (kind.quick) of the kind's loop, the same seed for both
        seen["samples"] = d.sample(n, 0, d.options(**kind.quick))
        seen["steps"] = kind.quick.get("steps")
        if kind.log_prob is not None:
            classes = getattr(source.loop, "num_classes", 0)
            labels = np.arange(n) % classes if classes else None
            data = seen["samples"] if reference is None else reference["samples"]
            if "log_prob" in source.graphs and (bound := source.graphs["log_prob"].spec.inputs[0]).high is not None:
                data = np.clip(data, bound.low, np.nextafter(np.float32(bound.high), np.float32(0)))  # image flows: [0, 1)
            seen["nll"] = float(-d.log_prob(data, labels).mean())
    return seen


def _rows(full: dict[str, Any], low: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's rows from both bundles' observations."""
    rows: list[dict[str, Any]] = []
    if "accuracy" in full:
        rows.append({"metric": f"test accuracy ({full['accuracy'][1]} labelled examples)", "fp32": full["accuracy"][0],
                     "quantized": low["accuracy"][0]})
    if "top" in full:
        where = "positions of 256 random inputs" if full["top"].ndim > 1 else "256 random inputs"
        rows.append({"metric": f"top-1 agreement with fp32 ({where})", "fp32": 1.0,
                     "quantized": float((full["top"] == low["top"]).mean())})
    if "lm" in full:
        rows.extend(_language_model_rows(full["lm"], low["lm"]))
    if "translations" in full:
        rows.extend(_translation_rows(full["translations"], low["translations"]))
    if "samples" in full:
        diff = np.abs(full["samples"].astype(np.float64) - low["samples"])
        steps = full["steps"]
        label = f"samples vs fp32, same seed (n={len(full['samples'])}" + (f", {steps} steps)" if steps else ")")
        rows.append({"metric": f"{label}: mean abs diff", "fp32": 0.0, "quantized": float(diff.mean())})
        rows.append({"metric": f"{label}: max abs diff", "fp32": 0.0, "quantized": float(diff.max())})
    if "nll" in full:
        rows.append({"metric": "NLL of fp32 samples (nats)", "fp32": full["nll"], "quantized": low["nll"]})
    return rows


LM_ROWS, LM_TOKENS, LM_GREEDY = 4, 64, 32  # the language-model report's text: rows x tokens; greedy tokens compared


def _language_model_observations(d: Any, reference: dict[str, Any] | None) -> dict[str, Any]:
    """One bundle's part of the language-model report, torch-free: the fp32 bundle samples the text (top-p, seed 0,
    LM_ROWS rows of LM_TOKENS tokens, from one-token prompts); along it, teacher-forced, each bundle's top-1 next
    token and mean negative log-likelihood; then LM_GREEDY greedy tokens from the same prompts."""
    loop = d.require("generate")
    model = d.kind.token_model(d.runners, loop)
    vocab, context = model.vocab_size, getattr(loop, "context", None)
    tokens, greedy_tokens = (min(k, context - 1) if context else k for k in (LM_TOKENS, LM_GREEDY))
    prompts = [np.asarray([(i + 1) % vocab], np.int64) for i in range(LM_ROWS)]
    if reference is None:
        text = np.stack(generate(model, prompts, mode_config("top-p", tokens), seed=0))  # no stop: full rows
        sequence = np.concatenate([np.stack(prompts), text], axis=1)
    else:
        sequence = reference["sequence"]
    top, log_likelihood = [], []  # per position, not the stacked logits: rows x tokens x vocab floats add up
    for t in range(sequence.shape[1] - 1):  # the logits at t predict sequence[:, t + 1]
        logits = model.start([row[:1] for row in sequence]) if t == 0 else model.step(sequence[:, t])
        top.append(logits.argmax(-1))
        log_likelihood.append(np.take_along_axis(log_softmax(logits), sequence[:, t + 1, None], -1)[:, 0])
    greedy = np.stack(generate(model, prompts, mode_config("greedy", greedy_tokens), seed=0))
    return {"sequence": sequence, "top": np.stack(top, 1), "nll": float(-np.mean(log_likelihood)), "greedy": greedy}


def _language_model_rows(full: dict[str, Any], low: dict[str, Any]) -> list[dict[str, Any]]:
    """Top-1 next-token agreement, perplexity and greedy tokens kept equal, from both bundles' observations."""
    rows, tokens = full["sequence"].shape[0], full["sequence"].shape[1] - 1
    greedy_tokens = full["greedy"].shape[1]
    same = full["greedy"] == low["greedy"]
    kept = float(np.where(same.all(1), greedy_tokens, same.argmin(1)).mean())
    where = f"{rows} x {tokens} tokens the fp32 model sampled"
    return [{"metric": f"top-1 next token agreement with fp32 ({where})", "fp32": 1.0,
             "quantized": float((full["top"] == low["top"]).mean())},
            {"metric": f"perplexity ({where})", "fp32": float(np.exp(full["nll"])), "quantized": float(np.exp(low["nll"]))},
            {"metric": f"greedy tokens equal to fp32 before the first difference (of {greedy_tokens})",
             "fp32": float(greedy_tokens), "quantized": kept}]


TRANSLATION_SOURCES = 16  # random sources of 3..16 tokens the translation report decodes


def _translations(d: Any) -> list[np.ndarray]:
    """Greedy decodings of TRANSLATION_SOURCES seeded random sources."""
    loop = d.require("translate")
    rng = np.random.default_rng(0)
    sources = [rng.integers(0, len(loop.src_vocab), size=int(rng.integers(3, 17))) for _ in range(TRANSLATION_SOURCES)]
    return list(d.translate_ids(sources, beams=1))


def _translation_rows(full: list[np.ndarray], low: list[np.ndarray]) -> list[dict[str, Any]]:
    """What lower precision costs an encoder-decoder: how many greedy decodings come out identical and how many
    tokens stay equal before the first difference."""
    pairs = list(zip(full, low))
    kept = [_common_prefix(x, y) for x, y in pairs]
    where = f"{TRANSLATION_SOURCES} random sources"
    return [{"metric": f"greedy outputs identical to fp32 ({where})", "fp32": 1.0,
             "quantized": float(np.mean([k == len(x) == len(y) for k, (x, y) in zip(kept, pairs)]))},
            {"metric": f"greedy tokens equal to fp32 before the first difference (mean, {where})",
             "fp32": float(np.mean([len(x) for x, _ in pairs])), "quantized": float(np.mean(kept))}]


def _common_prefix(x: np.ndarray, y: np.ndarray) -> int:
    n = min(len(x), len(y))
    differ = np.flatnonzero(x[:n] != y[:n])
    return int(differ[0]) if differ.size else n


def accuracy_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text form of accuracy_change rows."""
    return "\n".join(f"  {r['metric']}: fp32 {r['fp32']:.4g}, quantized {r['quantized']:.4g}" for r in rows)


def _onnx() -> Any:
    return optional_import("onnx", "quantize needs the onnx package; `pip install onnx`.")


def _calibration(spec: GraphSpec, shapes: list[dict[str, int]], count: int, seed: int) -> Iterator[dict[str, np.ndarray]]:
    """`count` seeded random feeds cycling through the bundle's check shapes."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        yield spec.random_inputs(rng, shapes[i % len(shapes)])


def _constant_matmuls(model: Any, store: DataFile) -> None:
    """Rewrite what the quantizers skip into what they quantize, in place: a Gemm over a constant weight becomes
    MatMul (+ Add of its bias), and a MatMul reading a Transpose of an initializer reads a transposed initializer
    instead, written to `store` (which holds the weights). GPT-2's Conv1D layers export as Gemm and its tied LM head
    as MatMul(x, Transpose(wte)): without this, int8-dynamic left every one of its linear layers in fp32."""
    onnx = _onnx()
    from onnx import helper

    from .onnx_weights import drop_unread, weight_array

    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    made: dict[tuple[str, tuple[int, ...]], str] = {}

    def transposed(name: str, perm: tuple[int, ...]) -> str:
        if (name, perm) not in made:
            made[(name, perm)] = f"{name}.transposed"
            array = weight_array(weights[name], store.path.parent).transpose(perm)
            graph.initializer.append(store.tensor(made[(name, perm)], array))
        return made[(name, perm)]

    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    unflattened = _unflattened_gemms(graph, producer, readers, weights)
    nodes = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        source = producer.get(node.input[1]) if node.op_type == "MatMul" else None
        if (node.op_type == "Gemm" and node.input[1] in weights and not attrs.get("transA", 0)
                and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0):
            weight = transposed(node.input[1], (1, 0)) if attrs.get("transB", 0) else node.input[1]
            x, result = unflattened.get(id(node), (node.input[0], node.output[0]))
            if len(node.input) > 2 and node.input[2]:
                product = f"{result}.product"
                nodes += [helper.make_node("MatMul", [x, weight], [product], name=f"{node.name}.matmul"),
                          helper.make_node("Add", [product, node.input[2]], [result], name=f"{node.name}.bias")]
            else:
                nodes.append(helper.make_node("MatMul", [x, weight], [result], name=node.name))
        elif source is not None and source.op_type == "Transpose" and source.input[0] in weights:
            rank = len(weights[source.input[0]].dims)
            perm = tuple(next((helper.get_attribute_value(a) for a in source.attribute if a.name == "perm"),
                              range(rank - 1, -1, -1)))
            rewired = onnx.NodeProto()
            rewired.CopyFrom(node)
            rewired.input[1] = transposed(source.input[0], perm)
            nodes.append(rewired)
        else:
            nodes.append(node)
    replaced = {result for _, result in unflattened.values()}  # the new MatMuls write the Reshapes' outputs
    nodes = [n for n in nodes if not (n.op_type == "Reshape" and n.output[0] in replaced)]
    while True:  # drop what the above orphaned: Transposes of weights, the unflattened Gemms' shape plumbing
        read = read_names(nodes) | {o.name for o in graph.output}
        kept = [n for n in nodes if any(o in read for o in n.output)]
        if len(kept) == len(nodes):
            break
        nodes = kept
    del graph.node[:]
    graph.node.extend(nodes)
    weights.clear()  # no Python reference may keep a dropped initializer's data alive
    drop_unread(graph)  # a weight read only transposed: its copy replaces it


def _unflattened_gemms(graph: Any, producer: dict[str, Any], readers: dict[str, list[Any]], weights: dict[str, Any]
                       ) -> dict[int, tuple[str, str]]:
    """The Gemms of linear layers on (..., K) inputs, written as Flatten(x, axis=-1) -> Gemm -> Reshape to
    Shape(x)[:-1] + [N] (onnx_export's _as_gemm), by id: (x, the Reshape's output). A MatMul over x writes that output directly, so the
    quantized graph has no Shape / Flatten / Concat / Reshape around each layer (four nodes fewer per layer,
    which at batch 1 cost as much time as the attention)."""
    from onnx import helper

    outputs = {o.name for o in graph.output}
    found = {}
    for gemm in graph.node:
        flat = producer.get(gemm.input[0]) if gemm.op_type == "Gemm" else None
        after = readers.get(gemm.output[0], []) if flat is not None else []
        if (flat is None or flat.op_type != "Flatten" or len(after) != 1 or gemm.output[0] in outputs
                or next((helper.get_attribute_value(a) for a in flat.attribute if a.name == "axis"), 1) != -1):
            continue
        reshape = after[0]
        concat = producer.get(reshape.input[1]) if reshape.op_type == "Reshape" and reshape.input[0] == gemm.output[0] else None
        lead = producer.get(concat.input[0]) if concat is not None and concat.op_type == "Concat" and len(concat.input) == 2 else None
        ends = {a.name: helper.get_attribute_value(a) for a in lead.attribute} if lead is not None else {}
        if (lead is not None and lead.op_type == "Shape" and lead.input[0] == flat.input[0] and ends == {"end": -1}
                and _constant(concat.input[1], producer, weights) == [_columns(gemm, weights)]):
            found[id(gemm)] = (flat.input[0], reshape.output[0])
    return found


def _columns(gemm: Any, weights: dict[str, Any]) -> int | None:
    """A Gemm's output width N from its constant weight (transB: [N, K], else [K, N]); None without one."""
    from onnx import helper

    weight = weights.get(gemm.input[1])
    if weight is None or len(weight.dims) != 2:
        return None
    trans = next((helper.get_attribute_value(a) for a in gemm.attribute if a.name == "transB"), 0)
    return int(weight.dims[0] if trans else weight.dims[1])


def _constant(name: str, producer: dict[str, Any], weights: dict[str, Any]) -> list[int] | None:
    """The integers of a small constant (a Constant node's value or an initializer), else None."""
    from onnx import numpy_helper

    node = producer.get(name)
    if node is None:
        tensor = weights.get(name)
    elif node.op_type == "Constant":
        tensor = next((a.t for a in node.attribute if a.name == "value"), None)
    else:
        tensor = None
    if tensor is None or tensor.data_type not in (6, 7) or len(tensor.dims) > 1:  # int32 / int64, 0-D or 1-D
        return None
    return [int(v) for v in numpy_helper.to_array(tensor).reshape(-1)]


MAX_CALIBRATION = 4096  # int8-static calibration batches: one run each, held one at a time


@dataclass(frozen=True)
class Conversion:
    """What a mode's converter may need besides the graph: its spec and check shapes (int8-static calibrates on
    them), the calibration batch count and the int4 options."""

    spec: GraphSpec
    shapes: list[dict[str, int]]
    calibration: int
    int4: Int4Options


def _fp16(staged: Path, target: Path, job: Conversion) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    _onnx().save(convert_float_to_float16(_onnx().load(str(staged)), keep_io_types=True), str(target))


def _int8_dynamic(staged: Path, target: Path, job: Conversion) -> None:
    from . import int8  # imports onnx: only where a graph is converted

    int8.dynamic(staged, target)


def _int8_static(staged: Path, target: Path, job: Conversion) -> None:
    from . import int8

    # onnxruntime's static quantizer goes by op type alone and takes ONNX's Attention (opset 23, --fuse) for its own
    # com.microsoft one, writing a QAttention that does not load: those nodes stay float
    graph = _onnx().load(str(staged), load_external_data=False).graph
    exclude = [n.name for n in graph.node if n.op_type == "Attention" and n.domain in ("", "ai.onnx")]
    del graph
    int8.static(staged, target, _calibration(job.spec, job.shapes, job.calibration, seed=0), exclude)


# mode -> converter(staged, target, job): reads the staged graph file and writes the converted graph (inputs and
# outputs stay float32). The quantizers (all but fp16) get linear layers as MatMul over constant weights
# (_constant_matmuls) first.
CONVERTERS: dict[str, Callable[[Path, Path, Conversion], None]] = {
    "fp16": _fp16,
    "int8-dynamic": _int8_dynamic,
    "int8-static": _int8_static,
    "int4": lambda staged, target, job: int4.convert(staged, target, job.int4),
}
QUANT_MODES = tuple(CONVERTERS)


def _convert(source: Path, target: Path, mode: str, job: Conversion) -> None:
    """Write `source` converted to `mode` at `target`. The graph the converter reads is staged beside `target`, its
    weights moved one at a time into an external-data file: staging holds one weight in memory (the source's external
    data is mapped), whatever the model weighs."""
    onnx = _onnx()
    staged = target.with_suffix(".staged.onnx")
    data = staged.with_name(staged.name + ".data")
    model = onnx.load(str(source), load_external_data=False)
    del model.graph.value_info[:]  # stale intermediate shapes trip the quantizer's own shape inference
    from .loop_graphs import densified  # these import onnx: only where a graph is converted
    from .onnx_weights import DataFile, initializers, weight_array

    densified(model.graph, source.parent)  # a pruned graph's sparse weights: the converters read dense ones
    try:
        with DataFile(data) as store:
            for tensor in initializers(model.graph):  # smaller ones (shape constants) and strings stay inline
                dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
                if dtype != object and math.prod(tensor.dims) * dtype.itemsize >= 1024:
                    store.put(tensor, weight_array(tensor, source.parent))
            if mode != "fp16":
                _constant_matmuls(model, store)
        onnx.save_model(model, str(staged))
        del model
        release_memory()
        with _quiet_root_logger():
            CONVERTERS[mode](staged, target, job)
    finally:
        staged.unlink(missing_ok=True)
        data.unlink(missing_ok=True)


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime's quantizers set up the root logger at import (a handler at INFO: every skipped node printed) and
    warn through it ('consider pre-processing'): they are imported here, the root logger is kept as it was, and below
    ERROR meanwhile."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    import onnxruntime.quantization.matmul_nbits_quantizer  # noqa: F401  (its import calls logging.basicConfig)

    root.handlers[:] = handlers
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.handlers[:], root.level = handlers, level


def quantize(
    bundle: str | os.PathLike[str] | Bundle, mode: str, out: str | os.PathLike[str], calibration: int = 32,
    force: bool = False, labelled: Labelled | None = None, on_phase: Callable[[str], None] | None = None,
    int4_options: Int4Options | None = None,
) -> Bundle:
    """A new bundle at `out` with every graph converted to `mode` (QUANT_MODES); `int4_options` (block size,
    symmetric, accuracy level) for int4. The accuracy change is measured on `labelled` (inputs, labels) for
    classifiers when given. `on_phase(text)` hears each phase (converting a graph, measuring) as it starts."""
    phase = on_phase or (lambda text: None)
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    if mode not in QUANT_MODES:
        raise InputError(f"unknown precision mode {mode!r}; choose one of {choices(QUANT_MODES)}.")
    if "precision" in b.manifest:
        raise InputError(f"bundle {b.path} is already {b.manifest['precision']['mode']}; quantize the fp32 bundle it came from.")
    if mode == "int8-static" and "fused" in b.manifest:
        raise InputError(f"bundle {b.path} was exported with --fuse: onnxruntime 1.32 aborts the whole process building "
                         "a session for static QDQ around opset-23 Attention inside the in-graph sampling loop; use "
                         "int8-dynamic or int4 on it, or int8-static on an export without --fuse.")
    check_int("--calibration", calibration, 1, MAX_CALIBRATION, meaning="batches of calibration inputs, each one run "
              "of the graph")
    if int4_options is not None and mode != "int4":
        raise InputError(f"--block-size, --asymmetric and --accuracy-level are int4 options; this is --mode {mode}.")
    options = int4_options or Int4Options()
    options.check()
    if Path(out).resolve() == b.path.resolve():
        raise InputError("--out is the source bundle; quantize writes a new bundle and never overwrites its source.")

    def fill(tmp: Path) -> dict[str, Any]:
        from .loop_graphs import build_loop_graphs  # onnx: not on the runtime's import path

        (tmp / "graphs").mkdir()
        manifest = json.loads(json.dumps(b.manifest))
        for role, graph in b.graphs.items():
            if graph.built_from is None:
                phase(f"converting '{role}' to {mode}")
                _convert(graph.path, tmp / "graphs" / f"{role}.onnx", mode,
                         Conversion(graph.spec, b.check_shapes, calibration, options))
                entry = manifest["graphs"][role]
                entry["file"] = f"graphs/{role}.onnx"
                entry.pop("external_data", None)
                data = tmp / "graphs" / f"{role}.onnx.data"  # int4 of a large graph keeps its weights beside it
                if data.exists():
                    entry["external_data"] = [{"file": f"graphs/{data.name}"}]
        check = kind_of(b.loop).graph_problems
        problems = check({role: tmp / "graphs" / f"{role}.onnx" for role in b.graphs}) if check else []
        if problems:
            raise InputError(f"the {mode} conversion breaks what this bundle's loop relies on: {'; '.join(problems)}; "
                             "nothing was written.")
        manifest["graphs"] |= build_loop_graphs(b.loop, tmp / "graphs")  # rebuilt around the converted step graph
        manifest["golden"] = [c for c in manifest["golden"] if c["role"] != LOOP_ROLE]  # exact-token replays
        carry_over(b, tmp, replays=False)
        report = ParityReport()
        for case in b.golden:
            if case.role == LOOP_ROLE:
                continue
            inputs, expected = case.load()
            try:
                with OrtRunner(case.role, b.graphs[case.role].spec, tmp / "graphs" / f"{case.role}.onnx") as runner:
                    report.add(case.name, expected, runner.infer(inputs), b.tolerance, runner.spec)
            except BundleError as exc:
                raise InputError(f"the {mode} conversion of graph '{case.role}' does not run in onnxruntime "
                                 f"({str(exc).split(': ', 2)[-1][:200]}); this model does not survive {mode}, "
                                 "nothing was written.") from exc
        worst = max(r.max_abs for r in report.rows)
        if not np.isfinite(worst):
            raise InputError(f"{mode} graphs produce NaN/Inf or wrong shapes on the golden inputs; this model does not survive {mode}.")
        tol = b.tolerance
        widened = Tolerance(max(tol.atol, 2 * worst), tol.rtol, {k: (max(a, 2 * worst), r) for k, (a, r) in tol.outputs.items()})
        manifest["tolerance"] = widened.to_json()
        manifest["precision"] = {
            "mode": mode,
            "source_bundle": str(b.path.resolve()),
            "measured_max_abs": worst,
            "source_tolerance": tol.to_json(),
        } | ({"calibration_batches": calibration} if mode == "int8-static" else {}) \
          | ({"int4": options.to_json()} if mode == "int4" else {})
        return manifest

    def measure(staged: Bundle) -> dict[str, Any]:
        phase("measuring the accuracy change")
        return {"precision": staged.manifest["precision"] | {"accuracy": accuracy_change(b, staged, labelled)}}

    return write_bundle(out, fill, force=force, check=measure)
