"""A bundle is untrusted input: verify never imports code a bundle names, and no file outside a bundle is read or
copied through a symbolic link inside it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import deploykit
from deploykit.bundle import load_bundle
from deploykit.errors import BundleError, InputError


def _cli(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploykit", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def _set_source(bundle: Path, source: dict) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["source"] = source
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_verify_never_imports_the_factory_a_bundle_names(tiny_bundle: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    (tiny_bundle / "dk_model_factory.py").write_text(f"open({str(marker)!r}, 'w').write('x')\ndef build(): pass\n")
    for ref in ("dk_model_factory:build", "__hello__:main", "tempfile:mkdtemp"):
        _set_source(tiny_bundle, {"kind": "factory", "ref": ref})
        run = _cli("verify", ".", cwd=tiny_bundle)  # the bundle's own folder is the working directory
        assert run.returncode == 0 and "PASS" in run.stdout, run.stderr  # the golden replay still runs
        assert "deploykit does not import code or open files a bundle names" in run.stdout
        assert "Hello world" not in run.stdout and not marker.exists()
        strict = _cli("verify", ".", "--fresh", cwd=tiny_bundle)
        assert strict.returncode == 2 and "Traceback" not in strict.stderr and not marker.exists()
    result = deploykit.verify(tiny_bundle)
    assert result.passed and any("does not import code" in n for n in result.notes)
    with pytest.raises(InputError, match="does not import code or open files a bundle names"):
        deploykit.load(tiny_bundle, backend="torch")
    assert "dk_model_factory" not in sys.modules and not marker.exists()


def test_a_factory_the_user_names_still_gives_fresh_inputs(tiny_bundle: Path, tiny_model) -> None:
    _set_source(tiny_bundle, {"kind": "factory", "ref": "tempfile:mkdtemp"})
    result = deploykit.verify(tiny_bundle, model=tiny_model, fresh=True, seed=0)
    assert result.passed and any(r.case.startswith("fresh") for r in result.report.rows)


def test_paths_a_manifest_names_are_never_opened(tiny_bundle: Path, tmp_path: Path) -> None:
    """A FIFO blocks whoever opens it, so a verify or profile that read a manifest-named path would hang here."""
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "folder" / "config.json")
    for source in ({"kind": "checkpoint", "zoo": "cnn", "path": str(fifo), "sha256": "0" * 64},
                   {"kind": "checkpoint", "zoo": "../../etc/passwd", "path": str(fifo), "sha256": "0" * 64},
                   {"kind": "hf", "path": str(tmp_path / "folder"), "fingerprint": "x"},
                   {"kind": "diffusers", "path": str(tmp_path / "folder"), "fingerprint": "x"}):
        _set_source(tiny_bundle, source)
        run = _cli("verify", tiny_bundle)
        assert run.returncode == 0 and "PASS" in run.stdout, run.stderr
        assert "deploykit does not import code or open files a bundle names" in run.stdout
        hint = "PATH_TO_CHECKPOINT" if source["kind"] == "checkpoint" else f"{source['kind']}:DIR"
        assert f"--source {hint}" in run.stdout
        with pytest.raises(InputError, match="pass the torch original yourself"):
            deploykit.load(tiny_bundle, backend="torch")
    quantized = tmp_path / "q"
    assert _cli("quantize", tiny_bundle, "--mode", "int8-dynamic", "--out", quantized).returncode == 0
    manifest = json.loads((quantized / "manifest.json").read_text())
    manifest["precision"]["source_bundle"] = str(fifo)
    (quantized / "manifest.json").write_text(json.dumps(manifest))
    args = ["profile", quantized, "--backend", "ort-cpu", "--batch", "1", "--iterations", "2", "--warmup", "0"]
    run = _cli(*args)
    assert run.returncode == 0 and f"quantized from {str(fifo)!r}; add --against PATH" in run.stdout, run.stderr
    assert "vs other" not in run.stdout
    run = _cli(*args, "--against", tiny_bundle)
    assert run.returncode == 0 and "vs other" in run.stdout and "--against" in run.stdout, run.stderr


def test_symbolic_links_inside_a_bundle_are_refused_and_nothing_is_copied(tiny_bundle: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("PRIVATE-KEY-MATERIAL")
    (tiny_bundle / "golden" / "notes.txt").symlink_to(secret)
    with pytest.raises(BundleError, match="'golden/notes.txt' is a symbolic link; a bundle holds only plain files"):
        load_bundle(tiny_bundle)
    for args, out in ((["quantize", tiny_bundle, "--mode", "int8-dynamic"], tmp_path / "q"),
                      (["pack", tiny_bundle, "--edge"], tmp_path / "e"),
                      (["triton", tiny_bundle], tmp_path / "t")):
        run = _cli(*args, "--out", out)
        assert run.returncode == 2 and "is a symbolic link" in run.stderr and "Traceback" not in run.stderr, run.stderr
        assert not out.exists()
    assert not any("PRIVATE" in p.read_text(errors="ignore") for p in tmp_path.rglob("*")
                   if p.is_file() and not p.is_symlink() and p != secret)


def test_a_symlinked_manifest_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.json"
    outside.write_text((tiny_bundle / "manifest.json").read_text())
    (tiny_bundle / "manifest.json").unlink()
    (tiny_bundle / "manifest.json").symlink_to(outside)
    with pytest.raises(BundleError, match="'manifest.json' is a symbolic link"):
        load_bundle(tiny_bundle)
    run = _cli("verify", tiny_bundle)
    assert run.returncode == 2 and "is a symbolic link" in run.stderr


def test_a_graph_whose_outputs_are_all_zero_proves_nothing(tmp_path: Path) -> None:
    """A zero-initialized head passes atol whatever the graph computes: export warns, verify fails unless allowed."""
    import torch

    class ZeroHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.input_shape = (6,)
            self.body, self.head = torch.nn.Linear(6, 8), torch.nn.Linear(8, 3)
            torch.nn.init.zeros_(self.head.weight)
            torch.nn.init.zeros_(self.head.bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.body(x)))

    model = ZeroHead().eval()
    with pytest.warns(UserWarning, match="parity case\\(s\\) prove nothing"):
        deploykit.export(model, "mlp", tmp_path / "b")
    result = deploykit.verify(tmp_path / "b", model=model, seed=0)
    assert result.report.passed and not result.passed and result.report.uninformative()
    assert deploykit.verify(tmp_path / "b", model=model, seed=0, allow_uninformative=True).passed
    run = _cli("verify", tmp_path / "b")
    assert run.returncode == 1 and "prove nothing" in run.stdout and "--allow-uninformative" in run.stdout
