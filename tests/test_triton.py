"""deploykit triton: model repositories, served by a real tritonserver where the Triton environment exists."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from deploykit.cli import main
from deploykit.errors import InputError
from deploykit.triton import MARKER, TritonOptions, from_wire, to_wire, write_repository
from deploykit.triton.models import sample_arguments

ROOT = Path(__file__).resolve().parents[1]
TRITON_PYTHON = Path(os.environ.get("DEPLOYKIT_TRITON_PYTHON", ROOT / ".venv-triton" / "bin" / "python"))
needs_triton = pytest.mark.skipif(
    not TRITON_PYTHON.is_file(),
    reason=f"no Triton environment at {TRITON_PYTHON}: `make triton-env` (nvidia-pytriton pins numpy<2, so it gets its own venv)",
)


def config(repo: Path, model: str) -> str:
    return (repo / model / "config.pbtxt").read_text()


def test_repository_has_a_model_per_graph_and_a_bls_loop_model(zoo_bundle, tmp_path: Path) -> None:
    ddpm = zoo_bundle("ddpm-digits")
    record = write_repository(ddpm, tmp_path / "repo", TritonOptions(name="ddpm", loop_instances=3, max_batch=32))
    repo = tmp_path / "repo"
    assert json.loads((repo / MARKER).read_text()) == record
    denoiser, sampler = config(repo, "ddpm_denoiser"), config(repo, "ddpm_sampler")
    assert 'platform: "onnxruntime_onnx"' in denoiser and (repo / "ddpm_denoiser" / "1" / "model.onnx").is_file()
    assert "max_batch_size: 32" in denoiser and "dynamic_batching" in denoiser
    assert '{ name: "t" data_type: TYPE_INT64 dims: [ 1 ] reshape: { shape: [ ] } }' in denoiser
    assert '{ name: "x" data_type: TYPE_FP32 dims: [ 1, 8, 8 ] }' in denoiser
    # the sampler runs over `steps`, not batch-first: whole requests, no batching
    assert "max_batch_size: 0" in sampler and "dynamic_batching" not in sampler
    assert '{ name: "noise" data_type: TYPE_FP32 dims: [ -1, -1, 1, 8, 8 ] }' in sampler
    loop = config(repo, "ddpm")
    assert 'backend: "python"' in loop and "count: 3 kind: KIND_CPU" in loop
    assert '{ name: "samples" data_type: TYPE_FP32 dims: [ -1, -1, -1, -1 ] }' in loop
    assert "from deploykit.triton.models import LoopModel as TritonPythonModel" in (repo / "ddpm" / "1" / "model.py").read_text()
    assert record["loop_model"] == {"model": "ddpm", "kind": "diffusion", "host_loop": True, "output_dtype": "float32"}
    assert (repo / "ddpm" / "1" / "bundle" / "manifest.json").is_file()


def test_python_graph_backend_and_models_without_a_loop(zoo_bundle, tmp_path: Path) -> None:
    record = write_repository(zoo_bundle("cgan"), tmp_path / "gan", TritonOptions(graph_backend="python", gpu=True))
    graph = config(tmp_path / "gan", "cgan_model")
    assert 'backend: "python"' in graph and "kind: KIND_GPU" in graph
    assert 'parameters { key: "bundle" value { string_value: "../cgan/1/bundle" } }' in graph
    assert record["loop_model"]["kind"] == "generator" and not record["loop_model"]["host_loop"]
    lm = write_repository(zoo_bundle("char-lm"), tmp_path / "lm", TritonOptions(graph_backend="python"))
    assert lm["loop_model"] is None  # token loops run on the client; graphs are still served
    first = next(iter(lm["graph_models"].values()))["model"]
    assert (tmp_path / "lm" / first / "1" / "bundle" / "manifest.json").is_file()
    assert sorted(p.name for p in (tmp_path / "lm").iterdir()) == sorted([MARKER, *(g["model"] for g in lm["graph_models"].values())])


def test_repository_refuses_bad_requests(zoo_bundle, tmp_path: Path) -> None:
    gan = zoo_bundle("cgan")
    with pytest.raises(InputError, match="--graph-backend 'tensorrt': choose one of 'onnxruntime', 'python'"):
        write_repository(gan, tmp_path / "a", TritonOptions(graph_backend="tensorrt"))
    with pytest.raises(InputError, match="--loop-instances is 0, expected an integer in 1..1024"):
        write_repository(gan, tmp_path / "a", TritonOptions(loop_instances=0))
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep")
    assert main(["triton", str(gan.path), "--out", str(precious), "--force"]) == 2  # not a repo deploykit wrote
    assert (precious / "notes.txt").read_text() == "keep"
    assert main(["triton", str(gan.path), "--out", str(tmp_path / "r")]) == 0
    assert main(["triton", str(gan.path), "--out", str(tmp_path / "r")]) == 2  # exists
    assert main(["triton", str(gan.path), "--out", str(tmp_path / "r"), "--force", "--max-batch", "8"]) == 0
    assert "max_batch_size: 8" in config(tmp_path / "r", "cgan_model")


def test_wire_shapes_and_request_arguments() -> None:
    from deploykit.specs import TensorSpec

    label = TensorSpec("label", "int64", ("batch",))
    assert to_wire(label, np.arange(3), True).shape == (3, 1)
    assert from_wire(label, np.arange(3).reshape(3, 1), True).shape == (3,)
    assert to_wire(label, np.arange(3), False).shape == (3,)
    n, seed, given = sample_arguments({"n": np.array([4], np.int32), "seed": None, "labels": np.array([1, 2]),
                                       "steps": np.array([10]), "scheduler": np.array([b"ddim"], object), "eta": None,
                                       "guidance": np.array([2.0], np.float32)})
    assert n == 4 and seed == 0 and given["steps"] == 10 and given["labels"].tolist() == [1, 2]
    assert given["scheduler"] == "ddim" and given["guidance"] == 2.0 and "eta" not in given
    with pytest.raises(InputError, match="request input 'n' .number of samples. is required"):
        sample_arguments(dict.fromkeys(("n", "seed", "labels", "steps", "scheduler", "eta", "guidance")))
    with pytest.raises(InputError, match="request input 'seed' has 2 values, expected 1"):
        sample_arguments({"n": np.array([1]), "seed": np.array([1, 2])} | dict.fromkeys(("labels", "steps", "scheduler", "eta", "guidance")))


ERRORS = """
import sys, tempfile
from pathlib import Path
import numpy as np
import tritonclient.http as http
from tritonclient.utils import InferenceServerException
from deploykit.triton import TritonOptions, write_repository
from deploykit.triton.server import TritonServer
repo = Path(tempfile.mkdtemp()) / "gan"
write_repository(sys.argv[1], repo, TritonOptions(graph_backend="python", loop_instances=1))
with TritonServer([repo], sys.executable) as server, http.InferenceServerClient(server.url) as client:
    def ask(**arrays):
        inputs = []
        for name, a in arrays.items():
            t = http.InferInput(name, list(a.shape), {"int32": "INT32", "int64": "INT64"}[str(a.dtype)])
            t.set_data_from_numpy(a)
            inputs.append(t)
        try:
            return client.infer("cgan", inputs).as_numpy("samples").shape
        except InferenceServerException as exc:
            return str(exc)
    print(ask(n=np.array([3], np.int32), labels=np.array([1, 2, 3], np.int64)))
    print(ask(n=np.array([2], np.int32), labels=np.array([4, 10], np.int64)))
    print(ask(n=np.array([0], np.int32)))
    print(ask(n=np.array([2**31 - 1], np.int32)))
    print(ask(n=np.array([2], np.int32), seed=np.array([-1], np.int64)))
"""


@needs_triton
def test_tritonserver_serves_generator_and_diffusion_loop_under_load(zoo_bundle, tmp_path: Path) -> None:
    gan, ddpm = zoo_bundle("cgan"), zoo_bundle("ddpm-digits")
    out = tmp_path / "load.json"
    run = subprocess.run(
        [str(TRITON_PYTHON), str(ROOT / "benchmarks" / "triton_serving.py"), "--generator", str(gan.path), "--loop",
         str(ddpm.path), "--clients", "4", "--requests", "40", "--loop-requests", "8", "--steps", "5", "--json", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    reports = {r["model"]: r for r in json.loads(out.read_text())}
    assert set(reports) == {"cgan_model", "cgan", "ddpm-digits_denoiser", "ddpm-digits"}
    for r in reports.values():
        assert r["errors"] == 0 and r["mismatches"] == 0, r
        assert r["requests"] == (8 if r["model"] == "ddpm-digits" else 40)
    # the diffusion loop's denoiser steps went through the denoiser model (BLS), not the sampler graph
    assert "ddpm-digits_denoiser" in reports["ddpm-digits"]["requests_per_execution"]


@needs_triton
def test_tritonserver_returns_clear_errors_for_bad_loop_requests(zoo_bundle) -> None:
    run = subprocess.run([str(TRITON_PYTHON), "-c", ERRORS, str(zoo_bundle("cgan").path)],
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    ok, bad_label, bad_n, huge_n, bad_seed = run.stdout.strip().splitlines()[-5:]
    assert ok == "(3, 1, 8, 8)"
    assert bad_label == "[400] --label 10 is out of range; this model has classes 0..9."  # INVALID_ARG
    assert bad_n == "[400] --n is 0, expected an integer >= 1 (the number of samples)."
    assert huge_n.startswith("[400] request input 'n' is 2147483647; this server samples at most 4096 per request")
    assert bad_seed == "[400] --seed is -1, expected an integer >= 0."


def test_graph_model_answers_each_request_of_a_dynamic_batch_on_its_own(zoo_bundle, tmp_path: Path, monkeypatch) -> None:
    """One bad request (t out of range) batched with good ones gets its own 400; the good ones are served."""
    import types

    from deploykit.triton import models

    class Request(dict):
        pass

    pb = types.SimpleNamespace(
        get_input_tensor_by_name=lambda r, name: types.SimpleNamespace(as_numpy=lambda: r[name]),
        Tensor=lambda name, array: (name, array),
        InferenceResponse=lambda tensors=None, output_tensors=None, error=None: {"tensors": tensors, "error": error},
        TritonError=type("TritonError", (), {"INVALID_ARG": 3, "__init__": lambda self, msg, code=None: setattr(self, "msg", msg)}),
    )
    monkeypatch.setattr(models, "_pb", lambda: pb)
    bundle = zoo_bundle("ddpm-digits")
    model = models.GraphModel()
    model.initialize({"model_config": json.dumps({"max_batch_size": 8, "parameters": {
        "bundle": {"string_value": str(bundle.path)}, "role": {"string_value": "denoiser"}}}), "model_repository": "/"})
    rng = np.random.default_rng(0)

    def request(t: int) -> Request:
        return Request(x=rng.standard_normal((1, 1, 8, 8), dtype=np.float32), t=np.array([[t]]), label=np.array([[3]]))

    good = [request(t) for t in (10, 500, 999)]
    responses = model.execute([good[0], request(5000), *good[1:]])
    assert [r["error"] is None for r in responses] == [True, False, True, True]
    assert "input 't' has values in [5000, 5000], expected integers in [0, 999]" in responses[1]["error"].msg
    alone = [model.execute([g])[0]["tensors"][0][1] for g in good]
    served = [r["tensors"][0][1] for i, r in enumerate(responses) if i != 1]
    for a, b in zip(alone, served):
        np.testing.assert_allclose(a, b, atol=1e-5)
    model.finalize()
