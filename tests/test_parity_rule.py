"""The parity rule at real magnitudes: the fixed fp32 tolerance, then the fp64 budget (torch-fp32's own error against
torch-fp64 on the same inputs), then the magnitude rule where float64 cannot run. Correct exports whose fp32 rounding
exceeds the fixed tolerance pass; deliberately wrong graphs (one per zoo model) fail, with their ratios."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import deploykit
from deploykit.backends import OrtRunner, RunnerOptions, TorchRunner
from deploykit.backends.torch import Float64References
from deploykit.bundle import load_bundle
from deploykit.errors import ParityError
from deploykit.models import ZOO
from deploykit.onnx_weights import initializers
from deploykit.parity import ParityReport, Tolerance, max_abs_diff, max_magnitude
from deploykit.sources import torch_reference
from deploykit.specs import GraphSpec, TensorSpec


class Cancelling(torch.nn.Module):
    """An MLP whose outputs are differences of nearly equal large activations (like logits near zero over a large
    residual stream): fp32 rounding alone breaks |err| <= 1e-4 + 1e-4 |y| on some elements, in torch as in ORT."""

    def __init__(self, spread: float = 1e-3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.input_shape = (16,)
        head, diff = torch.nn.Linear(256, 8), torch.nn.Linear(8, 4, bias=False)
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                                       torch.nn.ReLU(), head, diff)
        with torch.no_grad():
            for p in self.net.parameters():
                p.mul_(30.0)
            head.weight[1::2] = head.weight[0::2] * (1 + spread * torch.randn(4, 256))
            diff.weight.zero_()
            diff.weight[torch.arange(4), 2 * torch.arange(4)] = 1
            diff.weight[torch.arange(4), 2 * torch.arange(4) + 1] = -1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class NoFloat64(Cancelling):
    """The same (pairs 3 % apart: outputs larger beside their rounding), with a float32 tensor kept outside
    parameters and buffers: it cannot run in float64."""

    def __init__(self) -> None:
        super().__init__(spread=3e-2)
        self.mix = torch.eye(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) @ self.mix


def _mutated(graph: Path, out: Path, mutation: str) -> Path:
    """The graph with its largest float initializer (a Scan or Loop body's included) made wrong, as a bug would:
    `swap` exchanges two slices along its first axis longer than 1 (two heads, channels or gates swapped: the first
    and the one most unlike it), `scale` multiplies it by 1.01 (a constant off by 1 %)."""
    model = onnx.load(str(graph))
    floats = [t for t in initializers(model.graph) if t.data_type == onnx.TensorProto.FLOAT]
    target = max(floats, key=lambda t: int(np.prod(t.dims)))
    array = numpy_helper.to_array(target).copy()
    if mutation == "scale":
        array *= np.float32(1.01)
    else:
        axis = next(i for i, n in enumerate(array.shape) if n > 1)
        rows = np.moveaxis(array, axis, 0).reshape(array.shape[axis], -1)
        other = int(np.abs(rows - rows[0]).sum(1).argmax())
        rows[[0, other]] = rows[[other, 0]]
        array = np.moveaxis(rows.reshape(np.moveaxis(array, axis, 0).shape), 0, axis)
    target.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array), target.name))
    onnx.save(model, str(out))
    return out


def test_float64_runner_leaves_the_module_and_returns_graph_dtypes() -> None:
    model = Cancelling().eval()
    spec = GraphSpec((TensorSpec("x", "float32", ("batch", 16)),), (TensorSpec("logits", "float32", ("batch", 4)),))
    x = np.random.default_rng(0).standard_normal((32, 16)).astype(np.float32)
    with TorchRunner("model", spec, model) as r32, TorchRunner("model", spec, model, RunnerOptions(float64=True)) as r64:
        y32, y64 = r32.infer({"x": x})["logits"], r64.infer({"x": x})["logits"]
    truth = model.double()(torch.from_numpy(x).double()).detach().numpy()
    model.float()
    assert y64.dtype == np.float32
    assert next(model.parameters()).dtype == torch.float32  # the runner's copies, not the module, were float64
    assert max_abs_diff(y64, truth) < max_abs_diff(y32, truth) / 10  # fp64, rounded once to fp32 at the end


def test_rule_rescues_rounding_and_rejects_a_wrong_output() -> None:
    rng = np.random.default_rng(0)
    truth = rng.standard_normal(1000) * 1e3
    fp32 = truth + rng.uniform(-1e-2, 1e-2, truth.shape)  # torch's own rounding: budget 1e-2
    other = truth + rng.uniform(-1e-2, 1e-2, truth.shape)  # another kernel order
    wrong = other.copy()
    wrong[17] += 1.0  # one element off by 100x the budget
    tol = Tolerance(1e-4, 1e-4)
    for actual, ok in ((other, True), (wrong, False)):
        report = ParityReport()
        report.add("c", {"y": fp32}, {"y": actual}, tol, reference64=lambda: {"y": truth})  # noqa: B023
        (row,) = report.rows
        assert (row.rule, row.passed) == ("fp64", ok)
        assert row.budget == pytest.approx(max_abs_diff(fp32, truth))
        assert (row.ratio < 1.5) if ok else (row.ratio > 50)
        assert row.allowed == pytest.approx(tol.atol + (tol.multiple + 1) * row.budget)
    report = ParityReport()  # golden verify without torch: the bound recorded at export
    report.add("c", {"y": fp32}, {"y": other}, tol, recorded={"y": 0.05})
    report.add("d", {"y": fp32}, {"y": wrong}, tol, recorded={"y": 0.05})
    assert [(r.rule, r.passed) for r in report.rows] == [("recorded", True), ("recorded", False)]


def test_magnitude_rule_and_integers() -> None:
    e = np.linspace(-100, 100, 50)
    report = ParityReport()
    report.add("c", {"y": e}, {"y": e + 5e-3}, Tolerance(1e-4, 0.0), reference64=lambda: None)  # float64 did not run
    report.add("d", {"y": e}, {"y": e + 5e-1}, Tolerance(1e-4, 0.0), reference64=lambda: None)
    assert [(r.rule, r.passed) for r in report.rows] == [("magnitude", True), ("magnitude", False)]
    tokens = np.arange(12).reshape(2, 6)
    flipped = tokens.copy()
    flipped[1, 3] += 1
    report = ParityReport()
    report.add("t", {"ids": tokens}, {"ids": flipped}, Tolerance(1e-4, 1e-4), reference64=lambda: {"ids": flipped})
    assert [(r.rule, r.passed) for r in report.rows] == [("fixed", False)]  # ids are never rescued by a budget
    assert Tolerance.from_json({"atol": 1e-4, "rtol": 1e-4}) == Tolerance(1e-4, 1e-4)  # bundles from before the rule
    tol = Tolerance(1e-4, 1e-4, {"z": (1.0, 0.0)}, multiple=3.0, magnitude=1e-5)
    assert Tolerance.from_json(tol.to_json()) == tol


def test_export_passes_by_the_fp64_rule_and_golden_verify_keeps_its_bound(tmp_path: Path) -> None:
    model = Cancelling().eval()
    bundle = deploykit.export(model, "mlp", tmp_path / "b")
    allowed = {c.name: c.allowed for c in bundle.golden}
    assert any(allowed.values())  # some golden case was judged by the fp64 rule and records its bound
    golden = deploykit.verify(bundle, fresh=False)
    assert golden.passed and {r.rule for r in golden.report.rows} >= {"recorded"}
    fresh = deploykit.verify(bundle, model=model, fresh=True, seed=3)
    assert fresh.passed, fresh.report.table()
    assert "fp64" in fresh.report.table()
    wrong = _mutated(bundle.graphs["model"].path, tmp_path / "wrong.onnx", "swap")
    x = bundle.graphs["model"].spec.random_inputs(np.random.default_rng(0), {"batch": 32})
    with OrtRunner("model", bundle.graphs["model"].spec, wrong) as ort, \
            TorchRunner("model", bundle.graphs["model"].spec, model) as ref, \
            TorchRunner("model", bundle.graphs["model"].spec, model, RunnerOptions(float64=True)) as ref64:
        report = ParityReport()
        report.add("wrong", ref.infer(x), ort.infer(x), bundle.tolerance, reference64=lambda: ref64.infer(x))
    assert not report.passed and report.rows[0].rule == "fp64" and report.rows[0].ratio > 10


def test_magnitude_rule_where_float64_cannot_run(tmp_path: Path) -> None:
    model = NoFloat64().eval()
    bundle = deploykit.export(model, "mlp", tmp_path / "b")
    assert any(c.allowed for c in load_bundle(bundle.path).golden)  # the magnitude rule's bound, recorded
    fresh = deploykit.verify(bundle, model=model, fresh=True, seed=3)
    assert fresh.passed and "magnitude" in {r.rule for r in fresh.report.rows}, fresh.report.table()


def test_a_fixed_tolerance_alone_would_refuse_it(tmp_path: Path, monkeypatch) -> None:
    """The same export with the fp64 rule switched off (no float64 reference, no magnitude slack) is refused: the
    rule is what lets it through, not a wider fixed tolerance."""
    import deploykit.parity as parity

    monkeypatch.setattr(parity, "_rescue", lambda row, *args: row)
    with pytest.raises(ParityError):
        deploykit.export(Cancelling().eval(), "mlp", tmp_path / "b")


@pytest.mark.parametrize("name", list(ZOO))
def test_a_wrong_graph_is_rejected_and_the_correct_one_passes(name: str, zoo_bundle, tmp_path: Path) -> None:
    """Per zoo model: its first graph with float outputs, and two wrong copies (_mutated). On fresh inputs at the
    largest check shape, the correct graph passes the rule and each wrong one fails it; the ratios are printed
    (pytest -s): against the fp64 budget, or against the magnitude rule's bound where float64 cannot run. A scale
    that the model normalizes away (a conv before instance norm) is not a bug: only the swap is required there."""
    bundle = zoo_bundle(name)
    role, graph = next((r, g) for r, g in bundle.graphs.items() if g.built_from is None
                       and any(np.issubdtype(np.dtype(s.dtype), np.floating) for s in g.spec.outputs))
    module = torch_reference(bundle)[role]
    inputs = graph.spec.random_inputs(np.random.default_rng(0), bundle.check_shapes[-1])
    fp64 = Float64References({role: TorchRunner(role, graph.spec, module, RunnerOptions(float64=True))})
    with TorchRunner(role, graph.spec, module) as ref:
        expected = ref.infer(inputs)
    truth = fp64.infer(role, inputs)
    fp64.release()
    floats = [k for k, v in expected.items() if np.issubdtype(v.dtype, np.floating)]
    ratios, results, outputs = {}, {}, {}
    for label in ("correct", "swap", "scale"):
        path = graph.path if label == "correct" else _mutated(graph.path, tmp_path / f"{label}.onnx", label)
        with OrtRunner(role, graph.spec, path) as ort:
            actual = outputs[label] = ort.infer(inputs)
        report = ParityReport()
        report.add(label, expected, actual, bundle.tolerance, graph.spec, reference64=lambda: truth)  # noqa: B023
        if truth is None:  # the magnitude rule's own ratio: max |ort - torch| / its bound
            tol = bundle.tolerance
            ratios[label] = max(max_abs_diff(actual[k], expected[k]) / (tol.of(k)[0] + tol.magnitude *
                                max_magnitude(expected[k])) for k in floats)
        else:
            ratios[label] = max(max_abs_diff(actual[k], truth[k]) / max(max_abs_diff(expected[k], truth[k]), 1e-30)
                                for k in floats)
        results[label] = report
    unchanged = max(max_abs_diff(outputs["scale"][k], outputs["correct"][k]) for k in floats)
    assert results["correct"].passed, f"{name}: ratio {ratios['correct']:.3g}\n{results['correct'].table()}"
    assert not results["swap"].passed, f"{name} swap: ratio {ratios['swap']:.3g}\n{results['swap'].table()}"
    assert not results["scale"].passed or unchanged <= 1e-5 * max(max_magnitude(v) for v in expected.values()), \
        f"{name} scale: ratio {ratios['scale']:.3g}\n{results['scale'].table()}"
    rule = "fp64" if truth is not None else "magnitude"
    print(f"{name:<24} {role:<20} {rule:<9} ratio: correct {ratios['correct']:.3g}, row swap {ratios['swap']:.3g}, "
          f"1 % scale {ratios['scale']:.3g}")


def test_near_tie_greedy_and_sampled() -> None:
    from deploykit.runtimes.tokens import mode_config, near_tie

    logits = np.array([0.0, 5.0, 4.99, 1.0, 4.0])
    greedy, top_p = mode_config("greedy", 8), mode_config("top-p", 8)
    assert near_tie(logits, 0.3, greedy, (1, 2), slack=0.01)  # a 0.01 gap: two runs off by 0.01 can pick either
    assert not near_tie(logits, 0.3, greedy, (1, 4), slack=0.01)  # a 1.0 gap cannot flip
    p = np.exp(logits - logits.max())
    p /= p.sum()
    boundary = float(np.cumsum(p)[1])  # u just below the CDF step between tokens 1 and 2
    assert near_tie(logits, boundary - 1e-4, top_p, (1, 2), slack=1e-3)
    assert not near_tie(logits, boundary - 0.2, top_p, (1, 2), slack=1e-3)


def test_token_divergence_is_excused_only_at_a_near_tie(zoo_bundle) -> None:
    """The zoo GPT's loop check on ORT, with one picked token changed: a flip to the least likely token is no tie and
    fails; with a bound large enough to tie every logit it is excused, and the row is not compared after it."""
    from deploykit.backends import make_runners
    from deploykit.runtimes.kinds import compare_loop, kind_of
    from deploykit.runtimes.tokens import _check_run

    bundle = zoo_bundle("gpt")
    runners = make_runners(bundle, "ort-cpu")
    for runner in runners.values():
        runner.activate()
    try:
        loop = bundle.loop
        ours = kind_of(loop).check(runners, loop, 0)
        name = next(k for k in ours if k.startswith("tokens.greedy"))
        theirs = {k: v.copy() for k, v in ours.items()}
        prompts, _ = _check_run(loop, 0)
        lm = kind_of(loop).token_model(runners, loop)
        logits = lm.start([np.concatenate([prompts[0], ours[name][0, :5]])])[0]
        theirs[name][0, 5] = int(logits.argmin())  # what a broken graph would pick
        theirs[name][0, 6:] = (theirs[name][0, 6:] + 1) % len(loop.vocab)  # and everything after differs
        for bound, ok in ((None, False), (1e9, True)):
            report = ParityReport()
            if bound is not None:  # a logits bound recorded earlier in the report, as export and verify hold it
                report.add("graph", {"logits": np.zeros(3)}, {"logits": np.full(3, 1.0)}, Tolerance(1e-4, 0),
                           recorded={"logits": bound})
            compare_loop(report, "loop", runners, loop, 0, theirs, ours, bundle.tolerance)
            row = next(r for r in report.rows if r.case == "loop" and r.output == name)
            assert row.passed == ok and row.rule == ("near-tie" if ok else "fixed"), report.table()
            assert all(r.passed for r in report.rows if r.case == "loop" and r.output != name)
    finally:
        for runner in runners.values():
            runner.deactivate()


def test_an_onnxruntime_failure_in_the_checks_names_the_role_and_shape(tmp_path: Path, monkeypatch) -> None:
    """A backend exception inside the export's checks becomes an ExportError naming the graph and the check shape,
    and nothing is written."""
    from deploykit.backends.ort import OrtRunner as Ort
    from deploykit.errors import ExportError

    def broken(self, feeds):  # noqa: ANN001, ANN202
        raise RuntimeError("\x1b[31m[ONNXRuntimeError] : 1 : FAIL : Attempting to broadcast an axis by a dimension "
                           "other than 1. 56 by 96\x1b[0m")

    monkeypatch.setattr(Ort, "_infer", broken)
    with pytest.raises(ExportError, match=r"'model' graph at check shape batch=1: \[ONNXRuntimeError\].*56 by 96\. ") as err:
        deploykit.export(Cancelling().eval(), "mlp", tmp_path / "b")
    assert "\x1b" not in str(err.value) and not (tmp_path / "b").exists()


def test_a_golden_replay_without_a_recorded_bound_keeps_the_fixed_rule() -> None:
    """An output the export found within the fixed rule records no bound; replayed without torch, it is held to the
    fixed rule (not loosened to the magnitude rule)."""
    e = np.linspace(-100, 100, 50)
    report = ParityReport()
    report.add("golden", {"y": e}, {"y": e + 5e-3}, Tolerance(1e-4, 0.0))
    assert [(r.rule, r.passed) for r in report.rows] == [("fixed", False)]


def test_a_fixed_pass_near_its_limit_records_a_bound_for_other_kernel_orders() -> None:
    """An output the fixed rule passes near its limit records the bound the fp64 rule sets, so its golden replay
    under another kernel order (prepacked weights, another CPU) is judged by it; one far from its limit records
    nothing and costs no float64 run."""
    e = np.linspace(-100, 100, 50)
    tol = Tolerance(1e-4, 1e-4)
    calls = []

    def reference64() -> dict[str, np.ndarray]:
        calls.append(1)
        return {"y": e + 5e-3}  # budget 5e-3: bound 1e-4 + 11 * 5e-3

    report = ParityReport()
    report.add("near", {"y": e}, {"y": e + 0.9 * (1e-4 + 1e-4 * np.abs(e))}, tol, reference64=reference64)
    report.add("far", {"y": e}, {"y": e + 1e-7}, tol, reference64=reference64)
    assert [(r.rule, r.passed) for r in report.rows] == [("fixed", True), ("fixed", True)] and len(calls) == 1
    assert report.allowed("near") == {"y": pytest.approx(1e-4 + 11 * 5e-3)} and report.allowed("far") == {}
    replay = ParityReport()  # the golden replay: no torch, the recorded bound
    replay.add("near", {"y": e}, {"y": e + 2e-2}, tol, recorded=report.allowed("near"))
    replay.add("far", {"y": e}, {"y": e + 2e-2}, tol, recorded=report.allowed("far"))
    assert [(r.rule, r.passed) for r in replay.rows] == [("recorded", True), ("fixed", False)]
