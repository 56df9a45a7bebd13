"""Tensor and graph specs: the declared inputs/outputs of a graph, checked before any backend runs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InputError, choices

Dim = int | str
CACHE_DIM = "past"  # the one symbolic dim that may be 0 without a rule saying so: an empty KV cache (prefill)


@dataclass(frozen=True)
class DimRule:
    """Constraint on a symbolic dimension: a minimum, a divisor, optionally a maximum (e.g. a model's context) and
    the sum of other dims."""

    min: int = 1
    multiple_of: int = 1
    sum_of: tuple[str, ...] = ()  # e.g. total = past + seq for an attention mask over cache and new tokens
    max: int | None = None

    def text(self) -> str:
        """The rule as users read it, e.g. '>= 1 and <= 64'."""
        return (f">= {self.min}" + (f" and <= {self.max}" if self.max is not None else "")
                + (f" and a multiple of {self.multiple_of}" if self.multiple_of > 1 else ""))

    def check(self, name: str, value: int, where: str) -> None:
        """Raise InputError if `value` breaks the rule."""
        if value < self.min or value % self.multiple_of or (self.max is not None and value > self.max):
            raise InputError(f"{where}: dimension '{name}' is {value}, expected {self.text()}; resize or pad the "
                             "input.")


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor: dtype, shape (ints are fixed, strings are symbolic) and an optional value range.

    Bounded inputs take values in [low, high); for integers `high` may name a symbolic dim, meaning
    values up to and including that dim (e.g. per-row lengths bounded by 'time'). Unbounded floats
    are drawn standard normal, bounded ones uniform (e.g. dequantized pixels in [0, 1)).

    `padding` marks a 0/1 attention mask [batch, positions] drawn the way real batches look: each
    row left-padded by 0..dims[padding] zeros (row 0 by the most), ones after. With padding='past'
    only cached positions are padding, so every new query sees at least itself: no row of the
    check is an all-hidden (undefined) attention row. With `pad_right` (encoders' batches) rows end in
    0..dims[padding] zeros, at most all but one of the row.
    """

    name: str
    dtype: str
    shape: tuple[Dim, ...]
    high: int | str | None = None
    low: int = 0
    padding: str | None = None
    pad_right: bool = False

    def shape_text(self) -> str:
        """The shape as users read it, e.g. '[batch, 3, height, width]'."""
        return "[" + ", ".join(str(d) for d in self.shape) + "]"

    def is_integer(self) -> bool:
        """Whether the dtype is an integer type."""
        return bool(np.issubdtype(np.dtype(self.dtype), np.integer))

    def value_range(self, dims: Mapping[str, int]) -> tuple[int, int]:
        """Allowed integer values [low, high) at the given dim bindings."""
        if isinstance(self.high, str):
            return self.low, int(dims[self.high]) + 1
        return self.low, self.high or 2

    def bind(self, dims: Mapping[str, int]) -> tuple[int, ...]:
        """Concrete shape with symbolic dims replaced by `dims`."""
        return tuple(d if isinstance(d, int) else int(dims[d]) for d in self.shape)

    def random(self, rng: np.random.Generator, dims: Mapping[str, int]) -> np.ndarray:
        """A random array for this spec: uniform in its range, standard normal for unbounded floats."""
        shape = self.bind(dims)
        if self.padding is not None:
            most = min(int(dims[self.padding]), shape[-1] - 1) if self.pad_right else int(dims[self.padding])
            pads = rng.integers(0, most + 1, size=shape[0])
            if pads.size:
                pads[0] = most
            if self.pad_right:
                return (np.arange(shape[-1])[None, :] < shape[-1] - pads[:, None]).astype(self.dtype)
            return (np.arange(shape[-1])[None, :] >= pads[:, None]).astype(self.dtype)
        if self.high is not None and not self.is_integer():
            return rng.uniform(self.low, float(self.high), size=shape).astype(self.dtype)
        if self.is_integer():
            values = rng.integers(*self.value_range(dims), size=shape).astype(self.dtype)
            if isinstance(self.high, str) and values.size:  # row 0 at the bound: every check covers the full length
                values.flat[0] = self.value_range(dims)[1] - 1
            return values
        return rng.standard_normal(shape).astype(self.dtype)

    def to_json(self) -> dict[str, Any]:
        """Manifest form."""
        out: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.high is not None:
            out["high"] = self.high
        if self.low:
            out["low"] = self.low
        if self.padding is not None:
            out["padding"] = self.padding
        if self.pad_right:
            out["pad_right"] = True
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorSpec:
        """Inverse of to_json."""
        return cls(data["name"], data["dtype"], tuple(data["shape"]), data.get("high"), data.get("low", 0),
                   data.get("padding"), bool(data.get("pad_right", False)))


@dataclass(frozen=True)
class GraphSpec:
    """Inputs, outputs and dimension rules of one graph (one role of a bundle)."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dims: Mapping[str, DimRule] = field(default_factory=dict)

    def input_names(self) -> list[str]:
        """Names of the inputs, in graph order."""
        return [s.name for s in self.inputs]

    def output_names(self) -> list[str]:
        """Names of the outputs, in graph order."""
        return [s.name for s in self.outputs]

    def class_axis(self, output: str) -> int:
        """The classes axis of an output: its first fixed-size axis after the leading (batch) one, -1 if none
        (logits [batch, K], [batch, time, vocab], [batch, K, height, width], [batch, levels, time])."""
        spec = next((s for s in self.outputs if s.name == output), None)
        fixed = [i for i, d in enumerate(spec.shape) if i and isinstance(d, int)] if spec else []
        return fixed[0] if fixed else -1

    def nbytes(self, dims: Mapping[str, int]) -> int:
        """Bytes of every input and output at the given dim bindings (dims not given count as 1)."""
        bound = {d: 1 for t in self.inputs + self.outputs for d in t.shape if isinstance(d, str)} | dict(dims)
        return sum(int(np.prod(t.bind(bound), dtype=np.float64)) * np.dtype(t.dtype).itemsize
                   for t in self.inputs + self.outputs)

    def random_inputs(self, rng: np.random.Generator, dims: Mapping[str, int]) -> dict[str, np.ndarray]:
        """Random feeds for every input at the given dim bindings."""
        return {s.name: s.random(rng, dims) for s in self.inputs}

    def check_inputs(self, feeds: Mapping[str, Any], where: str) -> dict[str, np.ndarray]:
        """Validate feeds against the specs; return them as arrays. Raises InputError naming the input."""
        given, expected = set(feeds), set(self.input_names())
        if given - expected:
            raise InputError(
                f"{where}: unexpected input(s) {choices(sorted(given - expected))}; "
                f"this graph takes {choices(self.input_names())}."
            )
        if expected - given:
            raise InputError(
                f"{where}: missing input(s) {choices(sorted(expected - given))}; "
                f"this graph takes {choices(self.input_names())}."
            )
        bound: dict[str, int] = {}
        out: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            value = feeds[spec.name]
            if not isinstance(value, np.ndarray):
                raise InputError(
                    f"{where}: input '{spec.name}' is a {type(value).__name__}, expected a numpy array; "
                    "convert it with np.asarray(...)."
                )
            if value.dtype != np.dtype(spec.dtype):
                raise InputError(
                    f"{where}: input '{spec.name}' has dtype {value.dtype}, expected {spec.dtype}; "
                    f"convert it with .astype(np.{spec.dtype})."
                )
            if value.ndim != len(spec.shape):
                raise InputError(
                    f"{where}: input '{spec.name}' has shape {list(value.shape)}, expected {spec.shape_text()} "
                    f"({len(spec.shape)} dims, got {value.ndim})."
                )
            for axis, (want, got) in enumerate(zip(spec.shape, value.shape)):
                if isinstance(want, int):
                    if want != got:
                        raise InputError(
                            f"{where}: input '{spec.name}' has shape {list(value.shape)}, expected {spec.shape_text()} "
                            f"(axis {axis} must be {want})."
                        )
                    continue
                if want in bound and bound[want] != got:
                    raise InputError(
                        f"{where}: input '{spec.name}' axis {axis} ('{want}') is {got}, but another input "
                        f"set '{want}' to {bound[want]}; all inputs must agree."
                    )
                bound[want] = got
                if want in self.dims:
                    self.dims[want].check(want, got, f"{where}: input '{spec.name}'")
                elif got < (0 if want == CACHE_DIM else 1):  # an empty batch or time axis: backends may crash on it
                    raise InputError(f"{where}: input '{spec.name}' has shape {list(value.shape)}: dimension '{want}' "
                                     "is 0, expected at least 1.")
            out[spec.name] = value
        for name, rule in self.dims.items():  # after every dim is bound: sums and ranges refer to other dims
            if rule.sum_of and name in bound and all(d in bound for d in rule.sum_of):
                want = sum(bound[d] for d in rule.sum_of)
                if bound[name] != want:
                    parts = " + ".join(f"{d} ({bound[d]})" for d in rule.sum_of)
                    raise InputError(f"{where}: dimension '{name}' is {bound[name]}, expected {parts} = {want}.")
        for spec in self.inputs:
            value = out[spec.name]
            if spec.high is None or not value.size:
                continue
            low, high = spec.value_range(bound)
            if not spec.is_integer() and np.isnan(value).any():  # NaN fails no comparison: name it
                raise InputError(f"{where}: input '{spec.name}' holds NaN, expected values in [{low}, {high}).")
            if value.min() < low or value.max() >= high:
                bound_by = f" (at most '{spec.high}' = {high - 1})" if isinstance(spec.high, str) else ""
                allowed = f"integers in [{low}, {high - 1}]{bound_by}" if spec.is_integer() else f"values in [{low}, {high})"
                raise InputError(f"{where}: input '{spec.name}' has values in [{value.min()}, {value.max()}], expected {allowed}.")
        return out

    def to_json(self) -> dict[str, Any]:
        """Manifest form."""
        return {
            "inputs": [s.to_json() for s in self.inputs],
            "outputs": [s.to_json() for s in self.outputs],
            "dims": {
                k: {"min": r.min, "multiple_of": r.multiple_of} | ({"sum_of": list(r.sum_of)} if r.sum_of else {})
                | ({"max": r.max} if r.max is not None else {})
                for k, r in self.dims.items()
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GraphSpec:
        """Inverse of to_json."""
        return cls(
            tuple(TensorSpec.from_json(s) for s in data["inputs"]),
            tuple(TensorSpec.from_json(s) for s in data["outputs"]),
            {k: DimRule(v["min"], v["multiple_of"], tuple(v.get("sum_of", ())), v.get("max"))
             for k, v in data.get("dims", {}).items()},
        )


def dims_label(dims: Mapping[str, int]) -> str:
    """Readable name of a dim binding, e.g. 'batch=2,height=16,width=12'."""
    return ",".join(f"{k}={v}" for k, v in dims.items())


def check_finite(arrays: Mapping[str, np.ndarray], where: str) -> None:
    """Raise InputError if any floating array holds NaN or Inf."""
    for name, value in arrays.items():
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
            raise InputError(
                f"{where}: '{name}' holds {bad} NaN/Inf value(s); check the inputs "
                "(or run without --check-finite to let them through)."
            )
