"""One contract test for every runner: same outputs, validation before the backend, activate/deactivate."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import deploykit
from deploykit.backends import BACKENDS, RunnerOptions, make_runners
from deploykit.backends.ort import PROVIDERS, OrtRunner
from deploykit.bundle import load_bundle
from deploykit.errors import BackendUnavailableError, DeploykitError, InputError
from deploykit.sources import torch_reference
from deploykit.specs import GraphSpec, TensorSpec

AVAILABLE = set(ort.get_available_providers())


def skip_reason(backend: str) -> str | None:
    if backend in PROVIDERS and PROVIDERS[backend][0] not in AVAILABLE:
        return f"{PROVIDERS[backend][0]} not in this onnxruntime ({sorted(AVAILABLE)}); needs onnxruntime-gpu + GPU"
    if backend == "tensorrt" and (missing := [m for m in ("tensorrt", "polygraphy", "cuda") if importlib.util.find_spec(m) is None]):
        return f"the tensorrt backend needs {missing} and an NVIDIA GPU; not installed here"
    return None


@pytest.mark.parametrize("backend", BACKENDS)
def test_runner_contract(backend: str, tiny_bundle_master: Path, tiny_model, tmp_path: Path) -> None:
    if reason := skip_reason(backend):
        pytest.skip(reason)
    bundle = load_bundle(tiny_bundle_master)
    if backend == "tensorrt":  # engines are built into the bundle: use a copy
        from deploykit.engines import EngineRequest, build_engines

        bundle = load_bundle(shutil.copytree(tiny_bundle_master, tmp_path / "b"))
        build_engines(bundle, EngineRequest())
        bundle = load_bundle(bundle.path)
    modules = torch_reference(bundle, tiny_model) if backend == "torch" else None
    runner = make_runners(bundle, backend, RunnerOptions(threads=1, check_finite=True), modules)["model"]
    case = bundle.golden[1]
    inputs, expected = case.load()
    with pytest.raises(DeploykitError, match="not active"):
        runner.infer(inputs)
    with runner:
        out = runner.infer(inputs)
        assert list(out) == ["logits"] and out["logits"].dtype == np.float32
        np.testing.assert_allclose(out["logits"], expected["logits"], atol=bundle.tolerance.atol, rtol=bundle.tolerance.rtol)
        with pytest.raises(InputError, match=r"input 'x' has dtype float64, expected float32"):
            runner.infer({"x": inputs["x"].astype(np.float64)})
        with pytest.raises(InputError, match=r"input 'x' has shape \[7, 5\], expected \[batch, 6\]"):
            runner.infer({"x": inputs["x"][:, :5]})
        with pytest.raises(InputError, match="missing input"):
            runner.infer({})
        with pytest.raises(InputError, match="'x' holds 1 NaN/Inf"):
            bad = inputs["x"].copy()
            bad[0, 0] = np.nan
            runner.infer({"x": bad})
    runner.deactivate()  # idempotent
    assert not runner.active


@pytest.mark.parametrize("backend", ["ort-cuda", "ort-trt"])
def test_unavailable_gpu_backend_is_a_clear_error(backend: str, tiny_bundle_master: Path) -> None:
    if not skip_reason(backend):
        pytest.skip(f"{backend} is available here")
    runner = make_runners(load_bundle(tiny_bundle_master), backend)["model"]
    with pytest.raises(BackendUnavailableError, match="install deploykit\\[gpu\\]"):
        runner.activate()


def test_unknown_backend_and_unrebuildable_source(tiny_bundle_master: Path) -> None:
    bundle = load_bundle(tiny_bundle_master)
    with pytest.raises(InputError, match="unknown backend 'tensorflow'; choose one of 'ort-cpu'"):
        make_runners(bundle, "tensorflow")
    with pytest.raises(InputError, match="in-memory .*TinyMLP, which cannot be rebuilt; pass model="):
        torch_reference(bundle)


def test_profile_times_backends_in_alternating_blocks() -> None:
    """Every backend runs `iterations` timed calls, in BLOCKS blocks whose order reverses each block."""
    from deploykit.profile import BLOCKS, _interleaved

    calls: list[str] = []

    class Fake:
        def __init__(self, name: str) -> None:
            self.name = name

        def infer(self, feeds: dict) -> dict:
            calls.append(self.name)
            return {}

    times = _interleaved([Fake("a"), Fake("b")], {}, iterations=25, warmup=2)
    assert [len(t) for t in times] == [25, 25] and calls[:4] == ["a", "a", "b", "b"]  # warm-up first
    timed, per = calls[4:], -(-25 // BLOCKS)
    assert timed[:2 * per] == ["a"] * per + ["b"] * per and timed[2 * per:4 * per] == ["b"] * per + ["a"] * per


class _ConvNeXtBlock(torch.nn.Module):
    """torchvision's ConvNeXt in small: a CNBlock (a channels-last MLP between two permutes, scaled per channel by a
    [C, 1, 1] parameter) between channel LayerNorms (stem, downsample) that permute too. onnxruntime's transpose
    optimizer cancels the permutes across the residual and rewrites that parameter in place (over 1 KiB: external
    data)."""

    def __init__(self, dim: int = 320) -> None:
        super().__init__()
        self.stem, self.down = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
        self.conv = torch.nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.mlp = torch.nn.Sequential(torch.nn.LayerNorm(dim), torch.nn.Linear(dim, 2 * dim), torch.nn.GELU(),
                                       torch.nn.Linear(2 * dim, dim))
        self.layer_scale = torch.nn.Parameter(torch.rand(dim, 1, 1))
        self.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(dim, 3))
        self.input_shape = (dim, 8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        y = self.mlp(self.conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = x + self.layer_scale * y
        return self.head(self.down(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))


def test_export_checks_run_the_file_at_every_optimization_level(tmp_path: Path) -> None:
    """A ConvNeXt block exports and matches torch: the checks run onnxruntime on the written file (handing it the
    torch tensors broke at every level above DISABLE_ALL), and the bundle matches at each level."""
    torch.manual_seed(0)
    model = _ConvNeXtBlock().eval()
    bundle = deploykit.export(model, "cnn", tmp_path / "b")
    x = np.random.default_rng(1).standard_normal((2, 320, 8, 8)).astype(np.float32)
    want = model(torch.from_numpy(x)).detach().numpy()
    for level in ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL"):
        so = ort.SessionOptions()
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        session = ort.InferenceSession(str(bundle.graphs["model"].path), so, providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: x})[0], want, atol=1e-5)


def test_export_checks_free_the_arena_between_shapes(tmp_path: Path) -> None:
    """The export's checks run without onnxruntime's arena (freed between check shapes); users' runs keep it."""
    import onnx
    from onnx import helper, numpy_helper

    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 4])],
                              [numpy_helper.from_array(w, "w")])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    spec = GraphSpec((TensorSpec("x", "float32", ("batch", 3)),), (TensorSpec("y", "float32", ("batch", 4)),), {})
    x = np.ones((2, 3), np.float32)
    for arena in (True, False):
        with OrtRunner("g", spec, path, options=RunnerOptions(arena=arena)) as runner:
            assert runner.session.get_session_options().enable_cpu_mem_arena is arena
            np.testing.assert_array_equal(runner.infer({"x": x})["y"], x @ w)


def test_load_works_without_with_and_close_frees_the_sessions(zoo_bundle) -> None:
    """deploykit.load returns a ready object: the sessions start on first use and go on close() (and a later use
    starts them again); `with` keeps working and closes at the block's end."""
    import gc
    import weakref

    dep = deploykit.load(zoo_bundle("dcgan").path)
    assert not any(r.active for r in dep._runners.values())  # nothing built until used
    first = dep.sample(4, 0)
    assert first.shape[0] == 4 and all(r.active for r in dep._runners.values())
    dep.close()
    assert not any(r.active or r.session is not None for r in dep._runners.values())
    np.testing.assert_array_equal(dep.sample(4, 0), first)  # reactivated on use, same samples
    runners = dep._runners
    with deploykit.load(zoo_bundle("dcgan").path) as inside:
        inside.sample(2, 0)
    assert not any(r.active for r in inside._runners.values())
    ref = weakref.ref(dep)
    del dep
    gc.collect()
    assert ref() is None and not any(r.active for r in runners.values())  # collected: released


def test_in_place_infer_writes_the_callers_buffer_and_returns_every_output(tmp_path: Path) -> None:
    """infer(aliases=...) on onnxruntime's CPU provider: the aliased output is written into the caller's own array,
    an output whose shape the inputs give comes back in an array made for it, and one whose dims are the graph's own
    (here a Reshape's) from onnxruntime's allocation; a second call with a new buffer rebinds it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("TensorScatter", ["cache", "update", "at"], ["present"], axis=2),
         helper.make_node("Identity", ["update"], ["echo"]), helper.make_node("Reshape", ["present", "flat"], ["all"])],
        "g", [helper.make_tensor_value_info("cache", TensorProto.FLOAT, [2, 1, "cap", 3]),
              helper.make_tensor_value_info("update", TensorProto.FLOAT, [2, 1, 1, 3]),
              helper.make_tensor_value_info("at", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("present", "echo", "all")],
        [numpy_helper.from_array(np.array([-1], np.int64), "flat")])
    path = tmp_path / "scatter.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 24)]), str(path))
    spec = GraphSpec((TensorSpec("cache", "float32", (2, 1, "cap", 3)), TensorSpec("update", "float32", (2, 1, 1, 3)),
                      TensorSpec("at", "int64", (2,))),
                     (TensorSpec("present", "float32", (2, 1, "cap", 3)), TensorSpec("echo", "float32", (2, 1, 1, 3)),
                      TensorSpec("all", "float32", ("cap_times_6",))))
    with OrtRunner("step", spec, path) as runner:
        for cap in (4, 6):  # the second buffer is a new array: bound afresh
            cache = np.zeros((2, 1, cap, 3), np.float32)
            for step in range(2):
                update = np.full((2, 1, 1, 3), step + 1, np.float32)
                out = runner.infer({"cache": cache, "update": update, "at": np.array([step, step + 1])},
                                   aliases={"cache": "present"})
                assert out["present"] is cache and np.array_equal(out["echo"], update)
                np.testing.assert_array_equal(out["all"], cache.reshape(-1))
            assert cache[0, 0, :, 0].tolist() == [1, 2] + [0] * (cap - 2) and cache[1, 0, :, 0].tolist()[:3] == [0, 1, 2]
