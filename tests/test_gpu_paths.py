"""TensorRT engines and onnxruntime GPU provider paths: the logic that runs anywhere, and the real thing where a GPU is.

Without tensorrt / onnxruntime-gpu (this CI machine) the GPU-only tests skip with the reason; the
profile, engine-selection and I/O-binding logic is tested on the CPU.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import deploykit
from deploykit.backends import RunnerOptions, make_runners
from deploykit.backends.ort import provider_options
from deploykit.backends.tensorrt import check_profile, engine_name, select_engine
from deploykit.bundle import load_bundle
from deploykit.cli import main
from deploykit.engines import EngineRequest, build_engines, default_shapes, parse_shapes
from deploykit.errors import BackendUnavailableError, InputError
from deploykit.runtimes.schedulers import COLUMNS
from deploykit.runtimes.tokens import mode_config

TRT_MISSING = [m for m in ("tensorrt", "polygraphy", "cuda") if importlib.util.find_spec(m) is None]
needs_tensorrt = pytest.mark.skipif(bool(TRT_MISSING), reason=f"TensorRT path: {TRT_MISSING} not installed (needs an NVIDIA GPU)")


def test_default_profile_comes_from_the_dynamic_axes(zoo_bundle) -> None:
    ddpm = zoo_bundle("ddpm-digits")
    denoiser = default_shapes(ddpm, ddpm.graphs["denoiser"].spec, max_batch=32)
    batch = ddpm.check_shapes[0]["batch"]
    assert denoiser["x"] == {"min": [1, 1, 8, 8], "opt": [batch, 1, 8, 8], "max": [32, 1, 8, 8]}
    assert denoiser["t"] == {"min": [1], "opt": [batch], "max": [32]}
    sampler = default_shapes(ddpm, ddpm.graphs["sampler"].spec)
    steps = max(c["steps"] for c in ddpm.check_shapes)
    assert sampler["coefficients"]["max"] == [4 * steps, len(COLUMNS)] and sampler["guidance"]["min"] == [1]
    glow = zoo_bundle("glow-digits")
    x = default_shapes(glow, glow.graphs["sample"].spec)["z"]
    assert x["min"][2] == 4 and x["max"][2] % 4 == 0 and x["max"][2] >= 4 * 8  # height: a multiple of the squeeze


def test_engines_for_another_gpu_or_tensorrt_are_refused_with_the_fix() -> None:
    entries = [{"role": "model", "gpu": "NVIDIA A100-SXM4-40GB", "tensorrt": "10.3.0", "fp16": False, "file": "a"},
               {"role": "model", "gpu": "NVIDIA H100 80GB HBM3", "tensorrt": "10.8.0", "fp16": True, "file": "b"}]
    assert select_engine(entries, "model", "NVIDIA H100 80GB HBM3", "10.8.0", fp16=True)["file"] == "b"
    with pytest.raises(BackendUnavailableError, match=r"built for NVIDIA A100-SXM4-40GB with TensorRT 10.3.0; NVIDIA H100 "
                       r"80GB HBM3 with TensorRT 10.8.0 fp16; this is NVIDIA L4 with TensorRT 10.8.0.*rebuild here"):
        select_engine(entries, "model", "NVIDIA L4", "10.8.0", fp16=False)
    with pytest.raises(BackendUnavailableError, match="this is NVIDIA H100 80GB HBM3 with TensorRT 10.9.1"):
        select_engine(entries, "model", "NVIDIA H100 80GB HBM3", "10.9.1", fp16=True)
    with pytest.raises(BackendUnavailableError, match="no TensorRT engine for 'denoiser'; build one here"):
        select_engine(entries, "denoiser", "NVIDIA L4", "10.8.0", fp16=False)
    assert engine_name("denoiser", "NVIDIA H100 80GB HBM3", "sm90", "10.8.0", True) == \
        "denoiser.NVIDIA_H100_80GB_HBM3-sm90.trt10.8.0.fp16.engine"


def test_shapes_outside_the_profile_and_bad_shape_options_are_input_errors() -> None:
    shapes = {"x": {"min": [1, 1, 8, 8], "opt": [8, 1, 8, 8], "max": [64, 1, 8, 8]}}
    check_profile(shapes, {"x": np.zeros((64, 1, 8, 8), np.float32)}, "denoiser")
    with pytest.raises(InputError, match=r"input 'x' has shape \[65, 1, 8, 8\], outside the engine's profile min "
                                         r"\[1, 1, 8, 8\] max \[64, 1, 8, 8\]; rebuild with"):
        check_profile(shapes, {"x": np.zeros((65, 1, 8, 8), np.float32)}, "denoiser")
    assert parse_shapes(["x:8x1x8x8", "t:8"], "--opt-shapes") == {"x": [8, 1, 8, 8], "t": [8]}
    with pytest.raises(InputError, match="--max-shapes 'x:8xa': expected NAME:DxDx"):
        parse_shapes(["x:8xa"], "--max-shapes")


@pytest.mark.skipif(not TRT_MISSING, reason="tensorrt is installed here")
def test_build_engine_without_tensorrt_is_a_clear_error(tiny_bundle, tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailableError, match=r"needs tensorrt, which is not installed; install TensorRT 10"):
        build_engines(tiny_bundle, EngineRequest())
    assert main(["build-engine", str(tiny_bundle)]) == 2
    assert main(["verify", str(tiny_bundle), "--backend", "tensorrt"]) == 2
    assert not (tiny_bundle / "engines").exists() or not any((tiny_bundle / "engines").iterdir())


def test_provider_options_and_tensorrt_only_options() -> None:
    trt = provider_options("TensorrtExecutionProvider", RunnerOptions(device_id=1, fp16=True, engine_cache="/c"))
    assert trt == {"device_id": "1", "trt_fp16_enable": "True", "trt_timing_cache_enable": "True",
                   "trt_engine_cache_enable": "True", "trt_engine_cache_path": "/c"}
    assert provider_options("CUDAExecutionProvider", RunnerOptions(device_id=2)) == {"device_id": "2"}
    assert provider_options("CPUExecutionProvider", RunnerOptions()) == {}


def test_fp16_on_a_non_tensorrt_backend_is_refused(tiny_bundle_master: Path) -> None:
    runner = make_runners(load_bundle(tiny_bundle_master), "ort-cpu", RunnerOptions(fp16=True))["model"]
    with pytest.raises(InputError, match="fp16 and engine_cache are TensorRT options .* not ort-cpu; for fp16 there, "
                                         "`deploykit quantize --mode fp16`"):
        runner.activate()


@pytest.mark.parametrize("name", ["char-lm", "gpt"])
def test_io_binding_keeps_fed_back_state_in_session_memory(zoo_bundle, name: str) -> None:
    """The I/O-binding path (on by default on GPU) runs here on CPU memory: same tokens, state rebound (the host loop:
    gpt's in-graph loop keeps its state inside one call)."""
    path = zoo_bundle(name).path
    config = mode_config("top-k", 40)
    with deploykit.load(path) as plain:
        expected = plain.generate(["Beautiful is", "Errors"], config, seed=3, host=True)
    with deploykit.load(path, options=RunnerOptions(io_binding=True)) as bound:
        assert bound.generate(["Beautiful is", "Errors"], config, seed=3, host=True) == expected
        rebound = sum(r.rebound for r in bound.runners.values())
    loop = zoo_bundle(name).loop
    states = len(loop.states) if name == "char-lm" else 2 * int(loop.layers)  # (h, c) / (key, value) per layer
    assert rebound >= states * 39, rebound  # every decode step after the first takes its state from the session


@needs_tensorrt
def test_tensorrt_engines_verify_and_run_the_diffusion_host_loop(zoo_bundle, tmp_path: Path) -> None:
    gan = load_bundle(shutil.copytree(zoo_bundle("cgan").path, tmp_path / "gan"))
    build_engines(gan, EngineRequest(max_batch=16))
    assert deploykit.verify(gan, backend="tensorrt", fresh=False).passed
    ddpm = load_bundle(shutil.copytree(zoo_bundle("ddpm-digits").path, tmp_path / "ddpm"))
    build_engines(ddpm, EngineRequest(roles=["denoiser"], max_batch=16))
    from deploykit.runtimes.deployment import Deployment

    ddpm = load_bundle(ddpm.path)
    options = dict(steps=20, host=True, scheduler="ddim", guidance=3.0)
    with Deployment(ddpm, make_runners(ddpm, "tensorrt")) as trt, deploykit.load(ddpm.path) as cpu:
        trt.runners = {"denoiser": trt.runners["denoiser"]}
        a = trt.sample(8, 0, trt.options(**options))
        b = cpu.sample(8, 0, cpu.options(**options))
    np.testing.assert_allclose(a, b, atol=1e-3)
    manifest = json.loads((ddpm.path / "manifest.json").read_text())
    manifest["engines"][0]["gpu"] = "Some Other GPU"
    (ddpm.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BackendUnavailableError, match="built for Some Other GPU"):
        make_runners(load_bundle(ddpm.path), "tensorrt")["denoiser"].activate()
