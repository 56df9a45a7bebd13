"""One contract test for every runner: same outputs, validation before the backend, activate/deactivate."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

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


def test_shared_weights_replace_the_files_without_a_copy(tmp_path: Path) -> None:
    """OrtRunner(weights=...) runs on the given arrays (the export's checks hand it the torch tensors); the export
    refuses a data file whose bytes differ from the tensors it was written from."""
    import onnx
    from onnx import helper, numpy_helper

    from deploykit.errors import ExportError
    from deploykit.exporters.onnx_export import _written_as

    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 4])],
                              [numpy_helper.from_array(w, "w")])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path),
              save_as_external_data=True, location="g.onnx.data", size_threshold=0)
    spec = GraphSpec((TensorSpec("x", "float32", ("batch", 3)),), (TensorSpec("y", "float32", ("batch", 4)),), {})
    stored = onnx.load(str(path), load_external_data=False).graph
    assert set(_written_as(tmp_path, stored, {"w": w})) == {"w"}
    with pytest.raises(ExportError, match="differs from the tensor"):
        _written_as(tmp_path, stored, {"w": w + 1})
    # the same bytes in the torch parameter's own shape (ConvNeXt's layer scale): handed over in the graph's dims
    assert _written_as(tmp_path, stored, {"w": w.reshape(4, 3)})["w"].shape == (3, 4)
    assert not _written_as(tmp_path, stored, {"w": w[:2]}) and not _written_as(tmp_path, stored, {"w": w.view(np.int32)})
    x = np.ones((2, 3), np.float32)
    with OrtRunner("g", spec, path, weights={"w": 2 * w}) as runner:
        np.testing.assert_array_equal(runner.infer({"x": x})["y"], x @ (2 * w))
    with OrtRunner("g", spec, path) as runner:
        np.testing.assert_array_equal(runner.infer({"x": x})["y"], x @ w)
    for arena in (True, False):  # the export's checks run without onnxruntime's arena: freed between check shapes
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
