"""Every family: export a trained zoo model, then verify (golden + fresh inputs at every check shape)."""

from __future__ import annotations

import numpy as np
import pytest

import deploykit
from deploykit.exporters import FAMILIES
from deploykit.models import ZOO, load_checkpoint, trained
from deploykit.models.data import load_digits
from deploykit.runtimes.kinds import kind_of

ZOO_NAMES = list(ZOO)


def test_every_family_has_a_zoo_model_under_test() -> None:
    """hf-encoder, hf-seq2seq, gpt-inplace and text-to-image are reached through hf:DIR and diffusers:DIR folders
    only; tests/test_hf_encoders.py, tests/test_hf_seq2seq.py, tests/test_hf.py and tests/test_text_to_image.py export
    and verify them."""
    assert {e.family for e in ZOO.values()} | {"hf-encoder", "hf-seq2seq", "gpt-inplace", "text-to-image"} == set(FAMILIES)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_export_verify_on_trained_model(name: str, zoo_bundle) -> None:
    bundle = zoo_bundle(name)
    result = deploykit.verify(bundle, fresh=True, seed=1234)
    assert result.passed, result.report.table()
    fresh = [r for r in result.report.rows if r.case.startswith("fresh")]
    golden = [r for r in result.report.rows if r.case.startswith("golden")]
    assert fresh and golden
    assert len({dims["batch"] for dims in bundle.check_shapes}) >= 2  # two batch sizes from one export
    if bundle.family in ("fcn", "cyclegan"):
        assert len({r.shape[2:] for r in fresh}) == 2  # two spatial sizes from one export
    if bundle.family in ("rnn", "rnn-lm"):
        assert {dims["time"] for dims in bundle.check_shapes} == {1, 7, 500}  # T=1, 7, 500 from one export
    looped = [r for r in result.report.rows if " loop" in r.case]  # the sampling loop itself, torch vs ORT
    if kind_of(bundle.loop).use == "graphs":  # only graphs: golden and fresh graph cases prove the bundle
        assert not looped
    else:  # every loop kind is checked; test_kinds.py asserts each has its check
        assert any(r.case.startswith("golden loop") for r in looped) and any(r.case.startswith("fresh loop") for r in looped)
    assert all(np.isfinite(row.max_abs) and np.isfinite(row.max_rel) for row in result.report.rows)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_classifier_accuracy_through_ort_equals_torch(name: str, zoo_bundle) -> None:
    _, model, payload = load_checkpoint(trained(name))
    digits = load_digits()
    x = digits.x_test.reshape(len(digits.x_test), -1) if name == "mlp" else digits.x_test
    with deploykit.load(zoo_bundle(name).path) as dep:
        logits = dep.infer({dep.runner().spec.inputs[0].name: x})["logits"]
    accuracy = float((logits.argmax(1) == digits.y_test).mean())
    assert accuracy == pytest.approx(payload["metrics"]["test_accuracy"])
    assert accuracy > 0.9


def test_unet_segments_through_ort(zoo_bundle) -> None:
    from deploykit.models.data import segmentation_target

    digits = load_digits()
    with deploykit.load(zoo_bundle("unet").path) as dep:
        pred = dep.infer({"image": digits.x_test})["logits"].argmax(1)
    assert (pred == segmentation_target(digits.x_test, digits.y_test)).mean() > 0.95


def test_autoencoder_roles_chain(zoo_bundle) -> None:
    x = load_digits().x_test.reshape(-1, 64)
    with deploykit.load(zoo_bundle("autoencoder").path) as dep:
        code = dep.infer({"x": x}, role="encoder")["code"]
        recon = dep.infer({"code": code}, role="decoder")["reconstruction"]
    assert code.shape == (len(x), 12)
    assert float(((recon - x) ** 2).mean()) < 0.03


@pytest.mark.parametrize("name", ["dcgan", "cgan"])
def test_sampling_loop_ort_equals_torch_same_seed(name: str, zoo_bundle) -> None:
    bundle = zoo_bundle(name)
    with deploykit.load(bundle.path) as ort_dep, deploykit.load(bundle.path, backend="torch") as torch_dep:
        a, b = ort_dep.sample(20, seed=3), torch_dep.sample(20, seed=3)
    assert a.shape == (20, 1, 8, 8)
    np.testing.assert_allclose(a, b, atol=bundle.tolerance.atol, rtol=bundle.tolerance.rtol)
    assert np.abs(a).max() <= 1.0


def test_conditional_labels_steer_the_generator(zoo_bundle) -> None:
    with deploykit.load(zoo_bundle("cgan").path) as dep:
        ones, sevens = dep.sample(8, 0, dep.options(labels=np.asarray(1))), dep.sample(8, 0, dep.options(labels=np.asarray(7)))
    assert not np.allclose(ones, sevens)


def test_cyclegan_inverts_digits_through_ort(zoo_bundle) -> None:
    x = load_digits().x_test * 2 - 1
    with deploykit.load(zoo_bundle("cyclegan").path) as dep:
        y = dep.infer({"image": x})["translated"]
    assert float(np.abs(y + x).mean()) < 0.3  # learned the unpaired map A -> -A
