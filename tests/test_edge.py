"""pack --edge: ORT-format bundles that sample and verify with numpy + onnxruntime alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import deploykit
from deploykit.bundle import sha256_file
from deploykit.cli import main
from deploykit.edge import OPERATORS_FILE, pack_edge, size_report
from deploykit.errors import BundleError, InputError

# A device install: deploykit (--no-deps) + numpy + onnxruntime. Everything else fails to import.
MINIMAL = """
import importlib.abc, json, sys
BLOCKED = {"torch", "onnx", "onnxscript", "typer", "rich", "PIL", "sklearn", "matplotlib", "scipy"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed (minimal device install)")
sys.meta_path.insert(0, Block())
import numpy as np
import deploykit
bundle, out = sys.argv[1], sys.argv[2]
diffusion = {"steps": 10, "scheduler": "ddim", "guidance": 3.0} if "ddpm" in bundle else {}
with deploykit.load(bundle) as dep:
    np.save(out, dep.sample(4, 3, dep.options(labels=np.arange(4), **diffusion)))
result = deploykit.verify(bundle)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps({"passed": result.passed, "rows": len(result.report.rows), "loaded": loaded}))
"""


@pytest.fixture(scope="module")
def packed(zoo_bundle, tmp_path_factory: pytest.TempPathFactory) -> dict[str, deploykit.Bundle]:
    root = tmp_path_factory.mktemp("edge")
    return {name: pack_edge(zoo_bundle(name), root / name) for name in ("cgan", "ddpm-digits")}


def test_packed_graphs_are_ort_format_with_operator_list_and_sizes(zoo_bundle, packed) -> None:
    for name, bundle in packed.items():
        source = zoo_bundle(name)
        assert {g.path.suffix for g in bundle.graphs.values()} == {".ort"}
        assert set(bundle.graphs) == set(source.graphs)
        edge = bundle.manifest["edge"]
        config = (bundle.path / OPERATORS_FILE).read_text()
        assert "ai.onnx;" in config and edge["operators"]
        for op in edge["operators"]:
            assert op.split(":")[-1] in config
        assert set(edge["sizes"]) == set(source.graphs)
        assert all(s["ort_bytes"] == bundle.graphs[r].size_bytes for r, s in edge["sizes"].items())
    assert "Scan" in packed["ddpm-digits"].manifest["edge"]["operators"]  # the in-graph sampler survives
    assert "ConvTranspose" in packed["cgan"].manifest["edge"]["operators"]
    report = size_report(packed["ddpm-digits"])
    assert "sampler" in report and "operators for a minimal onnxruntime build" in report


def test_packed_bundle_samples_and_verifies_with_numpy_and_onnxruntime_only(zoo_bundle, packed, tmp_path: Path) -> None:
    for name, bundle in packed.items():
        out = tmp_path / f"{name}.npy"
        run = subprocess.run([sys.executable, "-c", MINIMAL, str(bundle.path), str(out)],
                             capture_output=True, text=True, timeout=300, check=False)
        assert run.returncode == 0, run.stderr
        report = json.loads(run.stdout.splitlines()[-1])
        assert report == {"passed": True, "rows": report["rows"], "loaded": []}
        assert report["rows"] >= len(bundle.golden)
        # the same seeded loop on the fp32 ONNX bundle gives the same samples
        with deploykit.load(zoo_bundle(name).path) as dep:
            if name == "ddpm-digits":

                expected = dep.sample(4, 3, dep.options(steps=10, labels=np.arange(4), scheduler="ddim", guidance=3.0))
            else:
                expected = dep.sample(4, 3, dep.options(labels=np.arange(4)))
        np.testing.assert_allclose(np.load(out), expected, atol=bundle.tolerance.atol)


def test_pack_refuses_bad_requests_and_leaves_source_alone(zoo_bundle, packed, tmp_path: Path) -> None:
    source = zoo_bundle("cgan")
    before = {role: sha256_file(g.path) for role, g in source.graphs.items()}
    with pytest.raises(InputError, match="already packed for edge"):
        pack_edge(packed["cgan"], tmp_path / "again")
    with pytest.raises(InputError, match="never overwrites its source"):
        pack_edge(source, source.path, force=True)
    assert main(["pack", str(source.path), "--out", str(tmp_path / "x")]) == 2  # no target
    assert main(["pack", str(source.path), "--edge", "--out", str(packed["cgan"].path)]) == 2  # exists
    assert not (tmp_path / "x").exists()
    assert {role: sha256_file(g.path) for role, g in source.graphs.items()} == before
    assert main(["pack", str(source.path), "--edge", "--out", str(tmp_path / "cli")]) == 0
    assert deploykit.verify(tmp_path / "cli", fresh=False).passed


def test_truncated_ort_graph_names_the_onnxruntime_version(packed, tmp_path: Path) -> None:
    import shutil

    copy = Path(shutil.copytree(packed["cgan"].path, tmp_path / "broken"))
    graph = copy / "graphs" / "model.ort"
    graph.write_bytes(graph.read_bytes()[:1000])
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["graphs"]["model"]["sha256"] = sha256_file(graph)  # get past the checksum to the loader
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="ORT-format graphs load only in the onnxruntime they were packed with"), deploykit.load(copy):
        pass
