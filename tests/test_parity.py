"""The comparator: max abs / max rel error and the allclose-style pass rule."""

from __future__ import annotations

import numpy as np

from deploykit.parity import ParityReport, Tolerance, compare_output


def test_within_and_outside_tolerance() -> None:
    e = np.array([1.0, -2.0, 1e-9], np.float32)
    ok = compare_output("c", "y", e, e + np.float32(5e-6), atol=1e-5, rtol=0)
    bad = compare_output("c", "y", e, e + np.float32(5e-5), atol=1e-5, rtol=0)
    assert ok.passed and not bad.passed
    assert np.isclose(bad.max_abs, 5e-5, rtol=1e-2)


def test_max_rel_ignores_near_zero_references() -> None:
    e = np.array([1e-9, 2.0])
    r = compare_output("c", "y", e, e + np.array([1e-7, 2e-4]), atol=1e-6, rtol=1e-3)
    assert np.isclose(r.max_rel, 1e-4)  # not 100 from the 1e-9 entry
    assert r.passed


def test_shape_and_nan_mismatch_fail() -> None:
    assert not compare_output("c", "y", np.zeros(3), np.zeros(4), 1, 1).passed
    assert not compare_output("c", "y", np.zeros(2), np.array([0, np.nan]), 1, 1).passed
    assert compare_output("c", "y", np.array([np.nan]), np.array([np.nan]), 1e-6, 0).passed


def test_report_fails_on_missing_output_and_when_empty() -> None:
    report = ParityReport()
    assert not report.passed
    report.add("c", {"y": np.zeros(2)}, {}, Tolerance(1e-6, 0))
    assert not report.passed
    assert "missing" in report.table()


def test_per_output_tolerance_overrides_the_family_default() -> None:
    tol = Tolerance(1e-6, 0.0, {"log_prob": (1e-3, 0.0)})
    report = ParityReport()
    report.add("c", {"x": np.zeros(2), "log_prob": np.zeros(2)}, {"x": np.full(2, 1e-4), "log_prob": np.full(2, 1e-4)}, tol)
    assert [(r.output, r.passed, r.atol) for r in report.rows] == [("x", False, 1e-6), ("log_prob", True, 1e-3)]
    assert Tolerance.from_json(tol.to_json()) == tol and "outputs" not in Tolerance(1e-4, 1e-4).to_json()


def test_top1_note_reads_the_class_axis_of_each_logits_layout() -> None:
    """[batch, K, height, width] (FCN), [batch, levels, time] (WaveNet), [batch, time, vocab] (LM): classes sit on the
    first fixed-size axis after batch, not always on the last."""
    from deploykit.parity import ParityReport, Tolerance
    from deploykit.specs import GraphSpec, TensorSpec

    rng = np.random.default_rng(0)
    for shape, dims, axis in (((2, 3, 4, 5), ("batch", 3, "height", "width"), 1), ((2, 7, 9), ("batch", 7, "time"), 1),
                              ((2, 9, 7), ("batch", "time", 7), 2)):
        spec = GraphSpec((), (TensorSpec("logits", "float32", dims),))
        assert spec.class_axis("logits") == axis
        expected = rng.standard_normal(shape).astype(np.float32)
        other = 1 if axis != 1 else len(shape) - 1  # an offset along another axis keeps the class argmax
        offset = (10.0 * np.arange(shape[other])).reshape([-1 if i == other else 1 for i in range(len(shape))])
        actual = (expected + offset).astype(np.float32)
        report = ParityReport()
        report.add("case", {"logits": expected}, {"logits": actual}, Tolerance(1e-4, 1e-4), spec)
        assert report.rows[0].note == "top-1 agrees 100.0%"
        if axis != len(shape) - 1:  # the last axis would have misread it
            assert np.mean(expected.argmax(-1) == actual.argmax(-1)) < 1


def test_chunked_comparison_matches_the_whole_array(monkeypatch) -> None:
    """Chunks of 7 elements give the figures of one pass over everything, the failing element in a late chunk."""
    import deploykit.parity as parity

    rng = np.random.default_rng(0)
    e = rng.standard_normal((3, 5, 11)).astype(np.float32)
    e[0, 1, 2], e[2, 4, 10] = np.inf, np.nan
    a = e + rng.uniform(-1e-6, 1e-6, e.shape).astype(np.float32)
    whole = compare_output("c", "logits", e, a, 1e-5, 1e-4)
    monkeypatch.setattr(parity, "COMPARE_CHUNK", 7)
    chunked = compare_output("c", "logits", e, a, 1e-5, 1e-4)
    assert chunked == whole and whole.passed and whole.informative
    a[2, 4, 9] += 1.0  # in the next-to-last chunk
    assert not compare_output("c", "logits", e, a, 1e-5, 1e-4).passed
    a[2, 4, 9] -= 1.0
    a[2, 3, 0] = np.inf
    assert compare_output("c", "logits", e, a, 1e-5, 1e-4).note == "NaN/Inf mismatch"
