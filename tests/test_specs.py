"""Input validation happens before any backend: each bad input gets an InputError naming it."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.errors import InputError
from deploykit.specs import DimRule, GraphSpec, TensorSpec, check_finite

SPEC = GraphSpec(
    inputs=(
        TensorSpec("image", "float32", ("batch", 1, "height", "width")),
        TensorSpec("label", "int64", ("batch",), high=10),
    ),
    outputs=(TensorSpec("y", "float32", ("batch", 10)),),
    dims={"height": DimRule(min=4, multiple_of=4), "width": DimRule(min=4, multiple_of=4)},
)


def good() -> dict[str, np.ndarray]:
    return {"image": np.zeros((2, 1, 8, 12), np.float32), "label": np.array([0, 9])}


def test_good_inputs_pass() -> None:
    assert set(SPEC.check_inputs(good(), "t")) == {"image", "label"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.pop("label"), "missing input(s) 'label'"),
        (lambda f: f.update(extra=np.zeros(1)), "unexpected input(s) 'extra'"),
        (lambda f: f.update(image=f["image"].astype(np.float64)), "dtype float64, expected float32"),
        (lambda f: f.update(image=np.zeros((2, 3, 8, 8), np.float32)), "axis 1 must be 1"),
        (lambda f: f.update(image=np.zeros((2, 8, 8), np.float32)), "(4 dims, got 3)"),
        (lambda f: f.update(label=np.array([0, 1, 2])), "another input set 'batch' to 2"),
        (lambda f: f.update(image=np.zeros((2, 1, 10, 8), np.float32)), "'height' is 10, expected >= 4 and a multiple of 4"),
        (lambda f: f.update(label=np.array([0, 10])), "expected integers in [0, 9]"),
        (lambda f: f.update(image=[[1.0]]), "convert it with np.asarray"),
    ],
)
def test_bad_inputs_are_named(change, message: str) -> None:
    feeds = good()
    change(feeds)
    with pytest.raises(InputError) as info:
        SPEC.check_inputs(feeds, "where")
    assert message in str(info.value)
    assert str(info.value).startswith("where:")


def test_check_finite_counts_bad_values() -> None:
    with pytest.raises(InputError, match="'x' holds 2 NaN/Inf"):
        check_finite({"x": np.array([1.0, np.nan, np.inf], np.float32)}, "t")
    check_finite({"x": np.array([1, 2])}, "t")  # integers are always finite


def test_spec_json_round_trip() -> None:
    assert GraphSpec.from_json(SPEC.to_json()) == SPEC
