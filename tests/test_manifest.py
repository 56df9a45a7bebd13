"""Every malformed manifest or golden file is a BundleError naming what is wrong (CLI: exit 2, no traceback),
never a crash inside deploykit."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import deploykit
from deploykit.bundle import load_bundle
from deploykit.errors import BundleError


def _edit(bundle: Path, change: Callable[[dict], None]) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    change(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _first_golden(m: dict) -> dict:
    return m["golden"][0]


CASES = {
    "graphs as a list": (lambda m: m.update(graphs=list(m["graphs"].values())), "manifest.json.graphs is list"),
    "graph without sha256": (lambda m: m["graphs"]["model"].pop("sha256"), "graphs['model'] lacks 'sha256'"),
    "spec without inputs": (lambda m: m["graphs"]["model"]["spec"].pop("inputs"), "spec lacks 'inputs'"),
    "golden without role": (lambda m: _first_golden(m).pop("role"), "golden[0] lacks 'role'"),
    "tolerance as a string": (lambda m: m.update(tolerance="1e-4"), "manifest.json.tolerance is str, expected an object"),
    "dtype float99": (lambda m: m["graphs"]["model"]["spec"]["inputs"][0].update(dtype="float99"),
                      "dtype 'float99', expected one of float32"),
    "file as a number": (lambda m: m["graphs"]["model"].update(file=7), "graphs['model'].file is 7, expected str"),
    "golden for no graph": (lambda m: _first_golden(m).update(role="decoder"), "golden case is for role 'decoder'"),
    "check_shapes of strings": (lambda m: m.update(check_shapes=[{"batch": "two"}]), "check_shapes[0]['batch'] is 'two'"),
    "schema_version true": (lambda m: m.update(schema_version=True), "schema_version is True"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_manifests_are_named(tiny_bundle: Path, case: str) -> None:
    change, message = CASES[case]
    _edit(tiny_bundle, change)
    with pytest.raises(BundleError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_bundle(tiny_bundle)


def test_deeply_nested_manifest_and_cli(tiny_bundle: Path) -> None:
    (tiny_bundle / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(BundleError, match="manifest.json is not valid JSON"):
        load_bundle(tiny_bundle)
    run = subprocess.run([sys.executable, "-m", "deploykit", "verify", str(tiny_bundle)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and "not valid JSON" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("content", ["garbage", "pickle"])
def test_corrupt_golden_files_rehashed_to_match_are_refused(tiny_bundle: Path, content: str) -> None:
    golden = tiny_bundle / json.loads((tiny_bundle / "manifest.json").read_text())["golden"][0]["file"]
    if content == "garbage":
        golden.write_bytes(b"PK\x03\x04 not a zip at all")
    else:
        buffer = io.BytesIO()
        np.savez(buffer, **{"in.x": np.array([{"evil": 1}], dtype=object)})
        golden.write_bytes(buffer.getvalue())
    digest = hashlib.sha256(golden.read_bytes()).hexdigest()
    _edit(tiny_bundle, lambda m: _first_golden(m).update(sha256=digest))
    with pytest.raises(BundleError, match="is not a readable array file"):
        deploykit.verify(tiny_bundle, fresh=False)
    run = subprocess.run([sys.executable, "-m", "deploykit", "verify", str(tiny_bundle), "--golden-only"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "is not a readable array file" in run.stderr and "Traceback" not in run.stderr
