"""Compare outputs of two runs and report per-output errors (the comparator is separate from runners)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .specs import GraphSpec


@dataclass(frozen=True)
class OutputParity:
    """Error statistics of one output tensor.

    max_rel is taken over elements whose reference magnitude exceeds atol, so that values
    near zero (where any rounding is a huge relative error) do not drown the figure.
    Pass means |actual - expected| <= atol + rtol * |expected| everywhere (numpy.allclose).
    """

    case: str
    output: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    atol: float
    rtol: float
    passed: bool
    note: str = ""
    informative: bool = True  # False when the reference is constant or within atol of 0: any output would pass


COMPARE_CHUNK = 1 << 18  # 2 MiB per float64 temporary; a real LM's check shape holds ~10 of them at once


def compare_output(
    case: str, name: str, expected: np.ndarray, actual: np.ndarray, atol: float, rtol: float, class_axis: int = -1
) -> OutputParity:
    """Compare one output tensor (`class_axis`: where logits keep their classes, for the top-1 note). Runs over
    float64 chunks of COMPARE_CHUNK elements, so its memory stays small beside a real LM's logits."""
    if expected.shape != actual.shape:
        note = f"shape {list(actual.shape)} != expected {list(expected.shape)}"
        return OutputParity(case, name, tuple(expected.shape), float("inf"), float("inf"), atol, rtol, False, note)
    flat_e, flat_a = expected.reshape(-1), actual.reshape(-1)
    max_abs = max_rel = magnitude = 0.0
    low, high = np.inf, -np.inf
    passed = True
    for start in range(0, flat_e.size, COMPARE_CHUNK):
        e = flat_e[start:start + COMPARE_CHUNK].astype(np.float64)
        a = flat_a[start:start + COMPARE_CHUNK].astype(np.float64)
        finite = np.isfinite(e)
        if not np.array_equal(finite, np.isfinite(a)):
            return OutputParity(case, name, expected.shape, float("inf"), float("inf"), atol, rtol, False,
                                "NaN/Inf mismatch")
        passed = passed and bool(np.array_equal(a[~finite], e[~finite], equal_nan=True))
        e, a = e[finite], a[finite]
        if not e.size:
            continue
        diff, ref = np.abs(a - e), np.abs(e)
        max_abs = max(max_abs, float(diff.max()))
        big = ref > atol
        if np.any(big):
            max_rel = max(max_rel, float((diff[big] / ref[big]).max()))
        passed = passed and bool(np.all(diff <= atol + rtol * ref))
        low, high, magnitude = min(low, float(e.min())), max(high, float(e.max())), max(magnitude, float(ref.max()))
    note = ""
    if name == "logits" and expected.ndim >= 2 and expected.size:  # what users of a classifier or LM care about
        note = f"top-1 agrees {np.mean(actual.argmax(class_axis) == expected.argmax(class_axis)):.1%}"
    informative = magnitude > atol and high > low
    return OutputParity(case, name, expected.shape, max_abs, max_rel, atol, rtol, passed, note, informative)


@dataclass(frozen=True)
class Tolerance:
    """Parity tolerance: pass when |actual - expected| <= atol + rtol * |expected| elementwise.

    `outputs` overrides (atol, rtol) for named outputs, e.g. a sum over many terms beside per-element values.
    """

    atol: float
    rtol: float
    outputs: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def of(self, output: str) -> tuple[float, float]:
        """(atol, rtol) for one output."""
        return self.outputs.get(output, (self.atol, self.rtol))

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (per-output overrides only when there are any)."""
        return {"atol": self.atol, "rtol": self.rtol} | ({"outputs": {k: list(v) for k, v in self.outputs.items()}}
                                                          if self.outputs else {})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Tolerance:
        """Inverse of to_json."""
        return cls(float(data["atol"]), float(data["rtol"]),
                   {k: (float(a), float(r)) for k, (a, r) in data.get("outputs", {}).items()})


@dataclass
class ParityReport:
    """Rows of OutputParity for a bundle; passes when every row passes."""

    rows: list[OutputParity] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when every compared output is within tolerance (and something was compared)."""
        return bool(self.rows) and all(r.passed for r in self.rows)

    def add(
        self,
        case: str,
        expected: Mapping[str, np.ndarray],
        actual: Mapping[str, np.ndarray],
        tolerance: Tolerance,
        spec: GraphSpec | None = None,
    ) -> None:
        """Compare every output of one case, each at its tolerance (`spec`: the graph's, for logits' class axis)."""
        for name, value in expected.items():
            atol, rtol = tolerance.of(name)
            if name not in actual:
                self.rows.append(
                    OutputParity(case, name, value.shape, float("inf"), float("inf"), atol, rtol, False, "missing")
                )
                continue
            axis = spec.class_axis(name) if spec is not None else -1
            self.rows.append(compare_output(case, name, value, actual[name], atol, rtol, axis))

    def uninformative(self) -> list[str]:
        """Cases whose every output is constant or within atol of 0 on the reference: they pass whatever the
        graph computes (a zero-initialized head, an uncalibrated network), so they prove nothing."""
        cases: dict[str, bool] = {}
        for r in self.rows:
            cases[r.case] = cases.get(r.case, False) or r.informative
        return [case for case, informative in cases.items() if not informative]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"passed": self.passed, "uninformative": self.uninformative(),
                "rows": [asdict(r) | {"shape": list(r.shape)} for r in self.rows]}

    def table(self) -> str:
        """Plain-text table, one row per output per case."""
        head = f"{'case':<28} {'output':<16} {'shape':<18} {'max_abs':>10} {'max_rel':>10} {'atol':>8} {'rtol':>8}  result"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(
                f"{r.case:<28} {r.output:<16} {str(list(r.shape)):<18} {r.max_abs:>10.2e} {r.max_rel:>10.2e} "
                f"{r.atol:>8.0e} {r.rtol:>8.0e}  {'ok' if r.passed else 'FAIL'}{' (' + r.note + ')' if r.note else ''}"
            )
        return "\n".join(lines)
