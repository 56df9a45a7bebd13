"""Bundle writing is atomic and never overwrites silently; loading refuses anything broken."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import deploykit
from deploykit.backends import OrtRunner
from deploykit.bundle import MANIFEST, load_bundle, sha256_file
from deploykit.errors import BundleError, ExportError, InputError
from deploykit.specs import GraphSpec


def edit_manifest(bundle: Path, change) -> None:
    manifest = json.loads((bundle / MANIFEST).read_text())
    change(manifest)
    (bundle / MANIFEST).write_text(json.dumps(manifest))


def refuses(bundle: Path, message: str) -> None:
    """load_bundle raises BundleError matching `message`, and `deploykit verify` exits 2 saying so, no traceback."""
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle)
    result = subprocess.run([sys.executable, "-m", "deploykit", "verify", str(bundle)], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert re.search(message, " ".join(result.stderr.split()))


def refresh_checksum(bundle: Path) -> None:
    edit_manifest(bundle, lambda m: m["graphs"]["model"].update(sha256=sha256_file(bundle / "graphs/model.onnx")))


def test_manifest_records_what_the_issue_asks(tiny_bundle: Path) -> None:
    m = json.loads((tiny_bundle / MANIFEST).read_text())
    g = m["graphs"]["model"]
    assert m["schema_version"] == 1 and m["family"] == "mlp"
    assert g["spec"]["inputs"][0] == {"name": "x", "dtype": "float32", "shape": ["batch", 6]}
    assert g["opset"] == 18 and len(g["sha256"]) == 64
    assert {"torch", "onnx", "onnxruntime", "deploykit"} <= set(m["tools"])
    assert m["source"]["kind"] == "python" and m["loop"] == {"kind": "classifier"}
    assert not list(tiny_bundle.rglob("*.pt")) and not list(tiny_bundle.rglob("*.pkl"))
    for case in load_bundle(tiny_bundle).golden:  # golden vectors load without pickles
        inputs, outputs = case.load()
        assert set(inputs) == {"x"} and set(outputs) == {"logits"}


def test_missing_graph(tiny_bundle: Path) -> None:
    (tiny_bundle / "graphs/model.onnx").unlink()
    refuses(tiny_bundle, "'graphs/model.onnx' is missing")


def test_checksum_mismatch(tiny_bundle: Path) -> None:
    path = tiny_bundle / "graphs/model.onnx"
    path.write_bytes(path.read_bytes()[:-10])
    refuses(tiny_bundle, "sha256 .* manifest says")


def test_truncated_onnx_with_matching_checksum(tiny_bundle: Path) -> None:
    path = tiny_bundle / "graphs/model.onnx"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    refresh_checksum(tiny_bundle)
    refuses(tiny_bundle, "corrupt or truncated")
    spec = GraphSpec.from_json(
        json.loads((tiny_bundle / MANIFEST).read_text())["graphs"]["model"]["spec"]
    )
    with pytest.raises(BundleError, match="corrupt or truncated"):  # and without onnx, ORT's error is ours too
        OrtRunner("model", spec, path).activate()


def test_newer_schema_version(tiny_bundle: Path) -> None:
    edit_manifest(tiny_bundle, lambda m: m.update(schema_version=99))
    refuses(tiny_bundle, "newer than this deploykit reads .* upgrade deploykit")


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")
    with pytest.raises(BundleError, match="not a deploykit bundle"):
        load_bundle(tmp_path)


def test_external_data_escaping_the_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    path = tiny_bundle / "graphs/model.onnx"
    model = onnx.load(str(path))
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../../secret.bin"
    onnx.save(model, str(path))
    refresh_checksum(tiny_bundle)
    refuses(tiny_bundle, "points outside the bundle")
    # the same refusal where onnx is not installed: load reads the references from the protobuf itself
    script = ("import sys; sys.modules['onnx'] = None\nimport deploykit\n"
              "try:\n    deploykit.load(sys.argv[1])\nexcept deploykit.BundleError as e:\n    print(e)\n"
              "print('onnx' in sys.modules and sys.modules['onnx'] is not None)")
    run = subprocess.run([sys.executable, "-c", script, str(tiny_bundle)], capture_output=True, text=True, check=True)
    assert "points outside the bundle" in run.stdout and run.stdout.strip().endswith("False"), run.stdout + run.stderr


def test_load_does_not_import_onnx(tiny_bundle: Path) -> None:
    script = "import sys, deploykit\nwith deploykit.load(sys.argv[1]):\n    pass\nprint('onnx' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", script, str(tiny_bundle)], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False", run.stderr


def test_declared_file_outside_the_bundle(tiny_bundle: Path) -> None:
    edit_manifest(tiny_bundle, lambda m: m["golden"][0].update(file="../../etc/passwd"))
    refuses(tiny_bundle, "points outside the bundle")


def test_existing_output_needs_force(tiny_model, tiny_bundle: Path) -> None:
    before = sha256_file(tiny_bundle / MANIFEST)
    with pytest.raises(InputError, match="already exists; .* --force"):
        deploykit.export(tiny_model, "mlp", tiny_bundle)
    assert sha256_file(tiny_bundle / MANIFEST) == before
    deploykit.export(tiny_model, "mlp", tiny_bundle, force=True)
    assert load_bundle(tiny_bundle).family == "mlp"
    assert [p.name for p in tiny_bundle.parent.iterdir()] == ["bundle"]  # no temp or backup left


def test_force_never_replaces_a_non_bundle(tiny_model, tmp_path: Path) -> None:
    precious = tmp_path / "mydata"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not something deploykit wrote .no manifest.json.; refusing"):
        deploykit.export(tiny_model, "mlp", precious, force=True)
    assert (precious / "notes.txt").read_text() == "keep me"


class DataDependent(torch.nn.Module):
    input_shape = (4,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent Python branch: torch.export cannot trace it
            return x * 2
        return x


def test_failed_export_leaves_nothing(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ExportError, match="could not export role 'model' of DataDependent") as info:
        deploykit.export(DataDependent(), "mlp", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
    message = str(info.value)
    line = next(i for i, text in enumerate(Path(__file__).read_text().splitlines(), 1) if "if x.sum() > 0" in text)
    assert f"test_bundle.py:{line} in forward" in message and "data-dependent" in message  # the cause and the user's line
    assert "\x1b[" not in message and len(message.splitlines()) == 3
    log = Path(re.search(r"torch's full output: (\S+)\.", message).group(1))
    assert "GuardOnDataDependentSymNode" in log.read_text()  # the whole cause chain, beside torch's own output
    captured = capfd.readouterr()
    assert "def forward" not in captured.out + captured.err  # no graph dump in the terminal


class FixedBatch(torch.nn.Module):
    input_shape = (4,)

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).reshape(2, 3)  # hard-codes the example batch of 2


def test_a_model_that_fails_at_a_check_shape_is_an_export_error_naming_it(tmp_path: Path) -> None:
    """A model that pins the batch to the example's is exported at that size by torch.onnx's fallback; the check at
    batch 1 then fails inside torch, which is reported as such, not as a traceback."""
    with pytest.raises(ExportError, match=r"FixedBatch fails on its own \(torch\) for role 'model' at check shape "
                                          r"batch=1: RuntimeError: shape '\[2, 3\]' is invalid"):
        deploykit.export(FixedBatch(), "mlp", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_unknown_family_and_protocol_violations(tiny_model, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown family 'no-such-family'; choose one of .*'mlp'"):
        deploykit.export(tiny_model, "no-such-family", tmp_path / "a")
    with pytest.raises(ExportError, match="no attribute 'latent_dim', which family 'dcgan' needs"):
        deploykit.export(tiny_model, "dcgan", tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


def test_weight_norm_is_folded(tmp_path: Path) -> None:
    from deploykit.models.feedforward import MLP

    model = MLP().eval()
    bundle = deploykit.export(model, "mlp", tmp_path / "wn")
    graph = onnx.load(str(bundle.graphs["model"].path))
    names = {i.name for i in graph.graph.initializer}
    assert not any("original0" in n or "original1" in n for n in names)  # folded, not recomputed per call
    assert deploykit.verify(bundle, model=model, seed=0).passed
    assert any("parametrizations" in n for n, _ in model.named_parameters())  # the user's model is untouched
    assert np.isfinite(bundle.tolerance.atol)


def test_legacy_weight_norm_is_folded(tmp_path: Path) -> None:
    class Legacy(torch.nn.Module):
        input_shape = (6,)

        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.utils.weight_norm(torch.nn.Linear(6, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    model = Legacy().eval()
    bundle = deploykit.export(model, "mlp", tmp_path / "legacy")
    names = {i.name for i in onnx.load(str(bundle.graphs["model"].path)).graph.initializer}
    assert not any(n.endswith(("weight_g", "weight_v")) for n in names)
    assert hasattr(model.fc, "weight_g")  # the user's model keeps its weight norm
    assert deploykit.verify(bundle, model=model, seed=0).passed


def test_unknown_loop_kind_is_a_bundle_error(zoo_bundle, tmp_path: Path) -> None:
    import shutil

    bundle = Path(shutil.copytree(zoo_bundle("dcgan").path, tmp_path / "b"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["loop"]["kind"] = "loop-from-the-future"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="loop kind 'loop-from-the-future' is unknown to this deploykit .*upgrade deploykit"):
        deploykit.verify(bundle, fresh=False)


class Wide(torch.nn.Module):
    input_shape = (6,)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 256), torch.nn.ReLU(), torch.nn.Linear(256, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_external_data_written_listed_loaded_and_tamper_checked(tmp_path: Path, monkeypatch) -> None:
    """Above the threshold (here 0 bytes) weights go to graphs/<role>.onnx.data, listed with its sha256."""
    model = Wide().eval()
    bundle = deploykit.export(model, "mlp", tmp_path / "ext", external_threshold=0)
    [extra] = bundle.manifest["graphs"]["model"]["external_data"]
    data = bundle.path / extra["file"]
    assert data.is_file() and extra["sha256"] == sha256_file(data) and extra["bytes"] == data.stat().st_size
    assert bundle.graphs["model"].path.stat().st_size < data.stat().st_size  # the weights are not in the graph
    assert deploykit.verify(bundle, model=model, fresh=True, seed=0).passed
    with deploykit.load(bundle.path) as dep:
        assert dep.infer({"x": np.ones((2, 6), np.float32)})["logits"].shape == (2, 3)
    import onnx

    from deploykit.precision import quantize

    half = quantize(bundle, "fp16", tmp_path / "half")  # staged from the external data one weight at a time
    assert "external_data" not in half.manifest["graphs"]["model"] and deploykit.verify(half, fresh=False).passed
    int8 = quantize(bundle, "int8-dynamic", tmp_path / "int8")  # int8 reads the external data one weight at a time too
    assert "external_data" not in int8.manifest["graphs"]["model"] and deploykit.verify(int8, fresh=False).passed
    split4 = quantize(bundle, "int4", tmp_path / "int4")  # int4 graphs under the threshold are written whole
    whole4 = quantize(deploykit.export(model, "mlp", tmp_path / "one"), "int4", tmp_path / "one-int4")
    assert "external_data" not in split4.manifest["graphs"]["model"]
    assert _weights(onnx.load(str(split4.graphs["model"].path)).graph) == _weights(
        onnx.load(str(whole4.graphs["model"].path)).graph)  # the same int4 graph as from the inline export
    monkeypatch.setattr("deploykit.onnx_weights.EXTERNAL_DATA_THRESHOLD", 0)  # above it: int4 keeps external data
    kept = quantize(bundle, "int4", tmp_path / "int4-split")
    [extra] = kept.manifest["graphs"]["model"]["external_data"]
    assert extra["sha256"] == sha256_file(kept.path / extra["file"]) and kept.graphs["model"].path.stat().st_size < 4096
    assert _weights(onnx.load(str(kept.graphs["model"].path)).graph) == _weights(onnx.load(str(whole4.graphs["model"].path)).graph)
    with deploykit.load(kept.path) as dep, deploykit.load(whole4.path) as one:
        x = {"x": np.ones((2, 6), np.float32)}
        assert np.array_equal(dep.infer(x)["logits"], one.infer(x)["logits"])
    blob = bytearray(data.read_bytes())
    blob[0] ^= 1
    data.write_bytes(bytes(blob))
    refuses(bundle.path, "external data of graph 'model' file 'graphs/model.onnx.data' has sha256")
    edit_manifest(bundle.path, lambda m: m["graphs"]["model"].pop("external_data"))
    refuses(bundle.path, "reads external data 'model.onnx.data', which the manifest does not list")


def test_below_the_threshold_weights_are_streamed_back_into_one_file(tmp_path: Path, zoo_bundle) -> None:
    """Export writes external data first; below the threshold `inline_external_data` folds it back field by field.
    The result is the graph onnx itself would write inline: same initializers, checker-clean, no data file left."""
    import onnx

    from deploykit.exporters.onnx_export import inline_external_data

    model = Wide().eval()
    split = deploykit.export(model, "mlp", tmp_path / "ext", external_threshold=0).graphs["model"].path
    whole = deploykit.export(model, "mlp", tmp_path / "one").graphs["model"].path
    assert sorted(p.name for p in whole.parent.iterdir()) == ["model.onnx"]
    onnx.checker.check_model(str(whole), full_check=True)
    want = {t.name: onnx.numpy_helper.to_array(t, str(split.parent)) for t in onnx.load(str(split)).graph.initializer}
    got = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(whole)).graph.initializer}
    assert want.keys() == got.keys() and all(np.array_equal(want[k], got[k]) for k in want)
    assert [n.op_type for n in onnx.load(str(whole)).graph.node] == [n.op_type for n in onnx.load(str(split)).graph.node]
    sampler = zoo_bundle("ddpm-digits").graphs["sampler"].path  # weights inside a Scan body
    copy = tmp_path / "sampler.onnx"
    onnx.save(onnx.load(str(sampler)), str(copy), save_as_external_data=True, location="sampler.onnx.data",
              size_threshold=0)
    inline_external_data(copy)
    assert not (tmp_path / "sampler.onnx.data").exists()
    onnx.checker.check_model(str(copy), full_check=True)
    assert _weights(onnx.load(str(copy)).graph) == _weights(onnx.load(str(sampler)).graph)


def _weights(graph) -> dict[str, bytes]:
    """Every initializer's bytes by name, Scan/Loop bodies included."""
    import onnx

    found = {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in graph.initializer}
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                found |= _weights(sub)
    return found


def test_export_restores_the_users_training_state(tmp_path: Path) -> None:
    model = Wide().train()
    model.net[0].weight.requires_grad_(False)  # a frozen layer stays frozen, the rest trainable
    deploykit.export(model, "mlp", tmp_path / "b")
    assert all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == [False, True, True, True]


def test_export_leaves_out_the_rewrite_rules_whose_matching_is_quadratic(tiny_model, tmp_path: Path, monkeypatch) -> None:
    """onnxscript matches a rewrite rule with several output nodes (SlicesSplit) by trying each node with every
    other: O(nodes^2), 55 of 123 CPU-s exporting a 48-layer Llama. torch.onnx's optimizer runs without those rules,
    and onnxscript's defaults are as they were afterwards."""
    import onnxscript.rewriter as rewriter

    defaults = rewriter._DEFAULT_REWRITE_RULES
    assert any(not r._target_pattern.has_single_output_node for r in defaults)  # there is one to leave out
    used = []
    original = rewriter.RewritePass.__init__

    def record(self, rules, *args, **kwargs) -> None:
        used.extend(rules)
        original(self, rules, *args, **kwargs)

    monkeypatch.setattr(rewriter.RewritePass, "__init__", record)
    deploykit.export(tiny_model, "mlp", tmp_path / "b")
    assert used and all(r._target_pattern.has_single_output_node for r in used)
    assert len(set(used)) == len(defaults) - sum(not r._target_pattern.has_single_output_node for r in defaults)
    assert rewriter._DEFAULT_REWRITE_RULES is defaults
