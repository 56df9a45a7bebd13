"""quantize: fp16, int8 and int4 bundles written beside the source, verified against torch, accuracy kept."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import deploykit
from deploykit.bundle import sha256_file
from deploykit.cli import main
from deploykit.errors import InputError
from deploykit.int4 import Int4Options
from deploykit.models.data import load_digits
from deploykit.precision import quantize
from deploykit.runtimes.tokens import mode_config


@pytest.mark.parametrize(("mode", "max_drop"), [("fp16", 0.005), ("int8-dynamic", 0.02), ("int8-static", 0.03)])
def test_quantized_vit_keeps_accuracy_and_verifies(zoo_bundle, tmp_path: Path, mode: str, max_drop: float) -> None:
    source = zoo_bundle("vit")
    before = {role: sha256_file(g.path) for role, g in source.graphs.items()}
    bundle = quantize(source, mode, tmp_path / mode, calibration=8)
    assert {role: sha256_file(g.path) for role, g in source.graphs.items()} == before  # source untouched
    precision = bundle.manifest["precision"]
    assert precision["mode"] == mode and bundle.tolerance.atol >= 2 * precision["measured_max_abs"]
    result = deploykit.verify(bundle, fresh=False)
    assert result.passed and all("top-1 agrees" in r.note for r in result.report.rows)
    digits = load_digits()
    accuracy = {}
    for name, path in (("fp32", source.path), (mode, bundle.path)):
        with deploykit.load(path) as dep:
            accuracy[name] = float((dep.infer({"image": digits.x_test})["logits"].argmax(1) == digits.y_test).mean())
    assert accuracy[mode] >= accuracy["fp32"] - max_drop, accuracy


def test_quantized_lm_generates_and_skips_exact_token_replay(zoo_bundle, tmp_path: Path) -> None:
    bundle = quantize(zoo_bundle("char-lm"), "int8-dynamic", tmp_path / "lm8")
    assert all(c.role != "loop" for c in bundle.golden)
    result = deploykit.verify(bundle, fresh=True, seed=0)
    assert result.passed, result.report.table()
    assert any("loop replay: skipped for a int8-dynamic bundle" in n for n in result.notes)
    with deploykit.load(bundle.path) as dep:
        assert len(dep.generate(["Beautiful is"], mode_config("greedy", 30))[0]) == 30
    report = {r["metric"].split(" (")[0]: r for r in bundle.manifest["precision"]["accuracy"]}
    assert set(report) == {"top-1 next token agreement with fp32", "perplexity",
                           "greedy tokens equal to fp32 before the first difference"}, report
    assert 0.8 <= report["top-1 next token agreement with fp32"]["quantized"] <= 1.0  # int8 rarely flips the argmax
    fp32, int8 = report["perplexity"]["fp32"], report["perplexity"]["quantized"]
    assert 1 < fp32 < 60 and abs(int8 - fp32) < 0.1 * fp32  # text it sampled itself: far below the 60-char vocabulary
    assert 0 <= report["greedy tokens equal to fp32 before the first difference"]["quantized"] <= 32


def test_quantize_refuses_bad_requests(zoo_bundle, tmp_path: Path) -> None:
    source = zoo_bundle("vit")
    with pytest.raises(InputError, match="unknown precision mode 'int2'"):
        quantize(source, "int2", tmp_path / "x")
    with pytest.raises(InputError, match="never overwrites its source"):
        quantize(source, "fp16", source.path, force=True)
    half = quantize(source, "fp16", tmp_path / "half")
    with pytest.raises(InputError, match="is already fp16; quantize the fp32 bundle"):
        quantize(half, "int8-dynamic", tmp_path / "y")
    assert main(["quantize", str(source.path), "--mode", "fp16", "--out", str(tmp_path / "half")]) == 2  # exists
    assert main(["quantize", str(source.path), "--mode", "int8-static", "--calibration", "0", "--out", str(tmp_path / "z")]) == 2
    assert not (tmp_path / "z").exists()
    assert np.isfinite(half.manifest["precision"]["measured_max_abs"])


def test_int4_quantizes_every_linear_layer_and_reports_what_it_costs(zoo_bundle, tmp_path: Path) -> None:
    """int4 (MatMulNBits, weight-only): every linear layer of the gpt bundle, its in-graph loop rebuilt around the
    converted step, verify green within the measured tolerance, the options and the LM report in the manifest."""
    import onnx

    source = zoo_bundle("gpt")
    bundle = quantize(source, "int4", tmp_path / "q4", int4_options=Int4Options(block_size=16))
    precision = bundle.manifest["precision"]
    assert precision["int4"] == {"block_size": 16, "symmetric": True, "accuracy_level": 4}
    ops = {role: [n.op_type for n in onnx.load(str(g.path)).graph.node] for role, g in source.graphs.items()}
    quantized = [n.op_type for n in onnx.load(str(bundle.graphs["decoder_with_past"].path)).graph.node]
    linear = ops["decoder_with_past"].count("Gemm")  # the exported linear layers, the LM head among them
    assert linear and quantized.count("MatMulNBits") == linear and "Gemm" not in quantized
    assert bundle.graphs["decoder_with_past"].size_bytes < 0.4 * source.graphs["decoder_with_past"].size_bytes
    result = deploykit.verify(bundle, fresh=True, seed=0)
    assert result.passed, result.report.table()
    report = {r["metric"].split(" (")[0]: r["quantized"] for r in precision["accuracy"]}
    assert report["top-1 next token agreement with fp32"] >= 0.7, report
    with deploykit.load(bundle.path) as dep:  # the in-graph loop runs the int4 step
        assert len(dep.generate(["The "], mode_config("greedy", 20))[0]) == 20


@pytest.mark.parametrize("options", [Int4Options(), Int4Options(block_size=16, symmetric=False, accuracy_level=0)])
def test_int4_streams_external_weights_into_what_onnxruntimes_quantizer_writes(tmp_path: Path, options) -> None:
    """int4.convert reads each weight from external data as it comes (mapped, not the whole model) and writes what
    onnxruntime's own MatMulNBitsQuantizer writes from the loaded model: the same packed blocks, scales, zero points
    and nodes, bit for bit; K not a multiple of the block (padded), a weight two MatMuls share, and one read inside
    an If branch included. Both graphs give the same outputs."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from deploykit import int4

    rng = np.random.default_rng(0)
    weights = {"w1": rng.standard_normal((40, 24), np.float32), "w2": rng.standard_normal((24, 8), np.float32),
               "w3": rng.standard_normal((40, 8), np.float32)}
    branch = helper.make_graph([helper.make_node("MatMul", ["x", "w3"], ["z"])], "then", [],
                               [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("MatMul", ["h", "w2"], ["z2"])], "else", [],
                              [helper.make_tensor_value_info("z2", TensorProto.FLOAT, None)])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["a"]), helper.make_node("MatMul", ["x", "w1"], ["b"]),
         helper.make_node("Add", ["a", "b"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"]),
         helper.make_node("If", ["flag"], ["u"], then_branch=branch, else_branch=other)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 40]),
              helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 8]) for n in ("y", "u")],
        [numpy_helper.from_array(w, n) for n, w in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    source = tmp_path / "split.onnx"
    onnx.save(model, str(source), save_as_external_data=True, location="split.onnx.data", size_threshold=0)
    int4.convert(source, tmp_path / "ours.onnx", options)
    ours = onnx.load(str(tmp_path / "ours.onnx"))
    reference = MatMulNBitsQuantizer(onnx.load(str(source)), block_size=options.block_size,
                                     is_symmetric=options.symmetric, accuracy_level=options.accuracy_level)
    reference.process()
    theirs = reference.model.model

    def tensors(m: onnx.ModelProto) -> dict[str, tuple[str, bytes, tuple[int, ...]]]:
        found = {t.name: t for t in m.graph.initializer}
        return {k: (str(a.dtype), a.tobytes(), a.shape) for k, t in found.items() for a in [numpy_helper.to_array(t)]}

    def nodes(g: onnx.GraphProto) -> list[tuple]:
        return [(n.op_type, n.domain, list(n.input), list(n.output),
                 sorted((a.name, nodes(a.g) if a.HasField("g") else helper.get_attribute_value(a)) for a in n.attribute))
                for n in g.node]

    assert tensors(ours) == tensors(theirs) and not {"w1", "w2", "w3"} & set(tensors(ours))
    assert nodes(ours.graph) == nodes(theirs.graph)
    assert [n.op_type for n in ours.graph.node].count("MatMulNBits") == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours.onnx", "split.onnx", "split.onnx.data"]  # inline
    x = rng.standard_normal((2, 40), np.float32)
    for flag in (True, False):
        feeds = {"x": x, "flag": np.array(flag)}
        got = ort.InferenceSession(str(tmp_path / "ours.onnx")).run(None, feeds)
        want = ort.InferenceSession(theirs.SerializeToString()).run(None, feeds)
        assert all(np.array_equal(g, w) for g, w in zip(got, want))


def test_int8_dynamic_streams_external_weights_into_what_onnxruntimes_quantizer_writes(tmp_path: Path) -> None:
    """int8.dynamic reads each weight from external data as it comes and writes the graph onnxruntime's
    quantize_dynamic writes from the loaded model: the same initializers bit for bit, the same nodes, the same
    outputs. Covered: an embedding Gather whose rows a MatMul reads quantized and other readers (an Add, a graph
    output, an LSTM) read dequantized, a second Gather only a graph output reads, three MatMuls sharing an input and a weight (two unnamed), a Conv with a bias
    and a bidirectional LSTM."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from deploykit import int8

    rng = np.random.default_rng(0)
    weights = {"table": (50, 16), "w1": (16, 24), "w2": (24, 8), "conv": (4, 3, 3, 3), "cb": (4,), "lw": (2, 24, 16),
               "lr": (2, 24, 6), "lb": (2, 48)}
    nodes = [helper.make_node("Gather", ["table", "ids"], ["x"], name="embed"),
             helper.make_node("MatMul", ["x", "w1"], ["a"], name="mm1"),
             helper.make_node("MatMul", ["x", "w1"], ["a2"]), helper.make_node("MatMul", ["x", "w1"], ["a3"]),
             helper.make_node("Add", ["a", "a2"], ["h0"]), helper.make_node("Add", ["h0", "a3"], ["h"]),
             helper.make_node("MatMul", ["h", "w2"], ["y"], name="mm2"),
             helper.make_node("MatMul", ["h", "w2"], ["y2"], name="mm3"),
             helper.make_node("Conv", ["img", "conv", "cb"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("LSTM", ["x", "lw", "lr", "lb"], ["ly", "lh"], name="lstm", hidden_size=6,
                              direction="bidirectional"),
             helper.make_node("Relu", ["x"], ["xr"]), helper.make_node("Gather", ["table", "ids"], ["x2"], name="out")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [5, 2]),
                     helper.make_tensor_value_info("img", TensorProto.FLOAT, [2, 3, 8, 8])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "y2", "c", "ly", "lh", "xr", "x", "x2")],
        [numpy_helper.from_array(rng.standard_normal(shape, np.float32), n) for n, shape in weights.items()])
    source = tmp_path / "split.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(source),
              save_as_external_data=True, location="split.onnx.data", size_threshold=0)
    int8.dynamic(source, tmp_path / "ours.onnx")
    quantize_dynamic(str(source), str(tmp_path / "theirs.onnx"), weight_type=QuantType.QInt8)
    ours, theirs = (onnx.load(str(tmp_path / f"{who}.onnx")) for who in ("ours", "theirs"))

    def tensors(m: onnx.ModelProto) -> dict[str, tuple[str, bytes, tuple[int, ...]]]:
        return {t.name: (str(a.dtype), a.tobytes(), a.shape) for t in m.graph.initializer
                for a in [numpy_helper.to_array(t)]}

    def node_set(m: onnx.ModelProto) -> list[tuple]:
        return sorted((n.op_type, n.domain, tuple(n.input), tuple(n.output), n.name) for n in m.graph.node)

    float_kept = {"cb", "lb"}  # biases stay float; every other weight is replaced by its quantized values
    assert tensors(ours) == tensors(theirs) and set(weights) & set(tensors(ours)) == float_kept
    assert node_set(ours) == node_set(theirs)
    assert {"MatMulInteger", "ConvInteger", "DynamicQuantizeLSTM", "DequantizeLinear"} <= {n[0] for n in node_set(ours)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours.onnx", "split.onnx", "split.onnx.data", "theirs.onnx"]
    feeds = {"ids": rng.integers(0, 50, (5, 2)), "img": rng.standard_normal((2, 3, 8, 8), np.float32)}
    got, want = (ort.InferenceSession(str(tmp_path / f"{who}.onnx")).run(None, feeds) for who in ("ours", "theirs"))
    assert all(np.array_equal(g, w) for g, w in zip(got, want))


def test_int8_static_calibrates_what_onnxruntimes_calibrator_finds(tmp_path: Path) -> None:
    """int8.static measures the activation ranges itself (the graph read without its weights, one session),
    quantizes the weights only MatMuls read and hands both to onnxruntime's quantize_static: the graph equals the one
    quantize_static writes from the float graph calibrating on its own with the same batches (initializers bit for
    bit, nodes, outputs), and no calibration file or staged graph is left behind. Covered: two MatMuls sharing a
    weight, an excluded MatMul, a weight a Transpose reads too, a Gather's table, a Conv with its bias."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from deploykit import int8

    rng = np.random.default_rng(0)
    weights = {"w1": (16, 24), "b1": (24,), "w2": (24, 8), "w4": (8, 8), "w5": (8, 8), "conv": (4, 3, 3, 3),
               "cb": (4,), "table": (50, 16)}
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"]), helper.make_node("Add", ["x", "e"], ["xe"]),
             helper.make_node("MatMul", ["xe", "w1"], ["a"], name="mm1"), helper.make_node("Add", ["a", "b1"], ["ab"]),
             helper.make_node("Relu", ["ab"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y0"], name="mm2"),
             helper.make_node("MatMul", ["r", "w2"], ["y1"], name="mm2b"), helper.make_node("Add", ["y0", "y1"], ["ys"]),
             helper.make_node("MatMul", ["ys", "w4"], ["y2"], name="mm4"),
             helper.make_node("MatMul", ["y2", "w5"], ["y3"], name="mm5"),
             helper.make_node("Transpose", ["w5"], ["w5t"]), helper.make_node("MatMul", ["y3", "w5t"], ["y4"]),
             helper.make_node("Softmax", ["y4"], ["y"], axis=-1),
             helper.make_node("Conv", ["img", "conv", "cb"], ["c0"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["c1"]),
             helper.make_node("MaxPool", ["c1"], ["c"], kernel_shape=[2, 2], strides=[2, 2])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16]),
                     helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"]),
                     helper.make_tensor_value_info("img", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "c")],
        [numpy_helper.from_array(rng.standard_normal(shape, np.float32), n) for n, shape in weights.items()])
    source = tmp_path / "split.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(source),
              save_as_external_data=True, location="split.onnx.data", size_threshold=0)

    def batches():
        draw = np.random.default_rng(1)
        for n in range(2, 7):
            yield {"x": draw.standard_normal((n, 16), np.float32), "ids": draw.integers(0, 50, n),
                   "img": draw.standard_normal((n, 3, 8, 8), np.float32)}

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = batches()

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    staged = tmp_path / "staged"
    staged.mkdir()
    int8.matmul_weights(source, staged / "w.onnx", {"mm4"})
    kept = {t.name: t.data_type for t in onnx.load(str(staged / "w.onnx")).graph.initializer}
    assert {n for n, kind in kept.items() if kind == TensorProto.FLOAT and n in weights} == set(weights) - {"w1", "w2"}
    assert kept["w1_quantized"] == kept["w2_quantized"] == TensorProto.INT8
    overridable = onnx.load(str(source))  # w1 also an input: a caller may feed another, so it stays as it is
    overridable.graph.input.append(helper.make_tensor_value_info("w1", TensorProto.FLOAT, [16, 24]))
    onnx.save(overridable, str(staged / "input.onnx"))
    int8.matmul_weights(staged / "input.onnx", staged / "w.onnx", {"mm4"})
    assert "w1" in {t.name for t in onnx.load(str(staged / "w.onnx")).graph.initializer}
    shutil.rmtree(staged)
    int8.static(source, tmp_path / "ours.onnx", batches(), ["mm4"])
    quantize_static(str(source), str(tmp_path / "theirs.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_exclude=["mm4"])
    ours, theirs = (onnx.load(str(tmp_path / f"{who}.onnx")) for who in ("ours", "theirs"))
    assert {t.name: numpy_helper.to_array(t).tobytes() for t in ours.graph.initializer} == {
        t.name: numpy_helper.to_array(t).tobytes() for t in theirs.graph.initializer}
    assert [(n.op_type, list(n.input), list(n.output)) for n in ours.graph.node] == [
        (n.op_type, list(n.input), list(n.output)) for n in theirs.graph.node]
    assert sum(n.op_type == "QuantizeLinear" for n in ours.graph.node) >= 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours.onnx", "split.onnx", "split.onnx.data", "theirs.onnx"]
    feeds = next(batches())
    got, want = (ort.InferenceSession(str(tmp_path / f"{who}.onnx")).run(None, feeds) for who in ("ours", "theirs"))
    assert all(np.array_equal(g, w) for g, w in zip(got, want))


def test_staging_reads_back_a_transposed_weight_it_just_wrote(tmp_path: Path) -> None:
    """A MatMul over Transpose(w) (a tied LM head) is staged with a transposed copy of w written to the staging
    file, which the converter then maps: the copy must be there at once, also when smaller than a write buffer. The
    int4 graph equals the one from the weight stored transposed."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from deploykit.precision import Conversion, _convert

    w = np.random.default_rng(0).standard_normal((24, 40), np.float32)  # 3.8 KiB: under an 8 KiB write buffer

    def graph(nodes: list, weight: np.ndarray) -> Path:
        path = tmp_path / f"{len(nodes)}.onnx"
        onnx.save(helper.make_model(helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 40])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 24])], [numpy_helper.from_array(weight, "w")]),
            opset_imports=[helper.make_opsetid("", 21)]), str(path))
        return path

    tied = graph([helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]), helper.make_node("MatMul", ["x", "wt"], ["y"])], w)
    plain = graph([helper.make_node("MatMul", ["x", "w"], ["y"])], np.ascontiguousarray(w.T))
    job = Conversion(None, [], 0, Int4Options(block_size=16))
    for source in (tied, plain):
        _convert(source, source.with_suffix(".int4"), "int4", job)
    values = [sorted(numpy_helper.to_array(t).tobytes() for t in onnx.load(str(p.with_suffix(".int4"))).graph.initializer)
              for p in (tied, plain)]
    assert values[0] == values[1] and len(values[0]) == 2


def test_int4_refuses_what_it_cannot_do(zoo_bundle, tmp_path: Path) -> None:
    """Options out of range, int4 options on another mode, and a graph without linear layers are refused."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from deploykit import int4

    source = zoo_bundle("vit")
    for options, match in ((Int4Options(block_size=48), "power of two"), (Int4Options(block_size=8), "block-size"),
                           (Int4Options(block_size=2**40), "block-size is 1099511627776, expected an integer in 16..256"),
                           (Int4Options(accuracy_level=7), "accuracy-level")):
        with pytest.raises(InputError, match=match):
            quantize(source, "int4", tmp_path / "x", int4_options=options)
    with pytest.raises(InputError, match="are int4 options; this is --mode int8-dynamic"):
        quantize(source, "int8-dynamic", tmp_path / "x", int4_options=Int4Options())
    assert main(["quantize", str(source.path), "--mode", "int8-dynamic", "--block-size", "64", "--out",
                 str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
    conv = helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
        [numpy_helper.from_array(np.ones((3, 2, 1, 1), np.float32), "w")]))
    onnx.save(conv, str(tmp_path / "conv.onnx"))
    with pytest.raises(InputError, match="this graph has none"):
        int4.convert(tmp_path / "conv.onnx", tmp_path / "conv.int4.onnx", Int4Options())
    assert not (tmp_path / "conv.int4.onnx").exists()
