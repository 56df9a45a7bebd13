"""quantize: fp16 / int8 bundles written beside the source, verified against torch, accuracy kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import deploykit
from deploykit.bundle import sha256_file
from deploykit.cli import main
from deploykit.errors import InputError
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
    with pytest.raises(InputError, match="unknown precision mode 'int4'"):
        quantize(source, "int4", tmp_path / "x")
    with pytest.raises(InputError, match="never overwrites its source"):
        quantize(source, "fp16", source.path, force=True)
    half = quantize(source, "fp16", tmp_path / "half")
    with pytest.raises(InputError, match="is already fp16; quantize the fp32 bundle"):
        quantize(half, "int8-dynamic", tmp_path / "y")
    assert main(["quantize", str(source.path), "--mode", "fp16", "--out", str(tmp_path / "half")]) == 2  # exists
    assert main(["quantize", str(source.path), "--mode", "int8-static", "--calibration", "0", "--out", str(tmp_path / "z")]) == 2
    assert not (tmp_path / "z").exists()
    assert np.isfinite(half.manifest["precision"]["measured_max_abs"])
