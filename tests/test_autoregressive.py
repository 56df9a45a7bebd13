"""Masked autoregressive families: folded masks, the AR property on the ONNX graph, likelihood and sampling parity."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import deploykit
from deploykit.errors import ExportError, InputError
from deploykit.models import autoregressive as ar
from deploykit.models.data import binarized_digits, level_digits, load_digits, tone_clips
from deploykit.runtimes.autoregressive import dependencies, masked_problems, sample_dimensionwise

MODELS = ["fvsbn", "nade", "made", "pixelcnn", "wavenet"]


def _test_data(name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(inputs, labels) of the held-out split each zoo model is scored on."""
    digits = load_digits()
    if name == "pixelcnn":
        return level_digits(digits.x_test, 4), digits.y_test
    if name == "wavenet":
        audio, kind = tone_clips(8, 512, seed=1)
        return ar.mu_law_encode(audio, 256), kind
    return binarized_digits(digits)[1], None


@pytest.mark.parametrize("name", MODELS)
def test_log_likelihood_parity_and_nll_through_ort(name: str, zoo_bundle) -> None:
    """log p(x) per example: ORT == torch within 1e-4 * |log p| (sums of D terms of ~1e-7 relative error)."""
    bundle = zoo_bundle(name)
    x, labels = _test_data(name)
    with deploykit.load(bundle.path) as ort, deploykit.load(bundle.path, "torch") as ref:
        got, want = ort.log_prob(x, labels), ref.log_prob(x, labels)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    metrics = deploykit.models.read_checkpoint(deploykit.models.trained(name))["metrics"]
    if name != "wavenet":  # the zoo reports per image; WaveNet per sample over other clips
        assert -got.mean() == pytest.approx(metrics["test_nll_nats"], rel=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_ort_and_torch_loops_give_identical_samples(name: str, zoo_bundle) -> None:
    bundle = zoo_bundle(name)
    kwargs = {"steps": 300} if name == "wavenet" else {}
    with deploykit.load(bundle.path) as ort, deploykit.load(bundle.path, "torch") as ref:
        for seed in (3, 4):
            np.testing.assert_array_equal(ort.sample(6, seed, ort.options(**kwargs)), ref.sample(6, seed, ref.options(**kwargs)))


def test_made_ensemble_orderings_and_autoregressive_property(zoo_bundle) -> None:
    bundle = zoo_bundle("made")
    loop = bundle.loop
    assert loop.roles == [f"conditionals.{k}" for k in range(4)] and loop.orderings[0] == list(range(64))
    with deploykit.load(bundle.path) as dep, deploykit.load(bundle.path, "torch") as ref:
        assert masked_problems(dep.runners, loop) == []
        for k in range(4):
            np.testing.assert_array_equal(dep.sample(5, 1, dep.options(ordering=k)), ref.sample(5, 1, ref.options(ordering=k)))
            changed, _ = dependencies(dep.runners[f"conditionals.{k}"], loop)
            rank = np.argsort(loop.orderings[k])
            assert not (changed & (rank[None, :] <= rank[:, None])).any()
            assert changed[loop.orderings[k][0], loop.orderings[k][-1]]  # the last sees the first
        with pytest.raises(InputError, match="--ordering 4: this bundle has ordering"):
            dep.sample(2, 0, dep.options(ordering=4))
    graph = onnx.load(bundle.path / "graphs" / "conditionals.1.onnx").graph
    assert not any("mask" in init.name for init in graph.initializer)  # folded: weight * mask is one constant


def test_nade_recursion_equals_full_passes(zoo_bundle) -> None:
    """The O(H) step recursion samples what D full conditionals passes sample with the same uniforms."""
    bundle = zoo_bundle("nade")
    with deploykit.load(bundle.path) as dep:
        np.testing.assert_array_equal(dep.sample(16, 5), sample_dimensionwise(dep.runners, bundle.loop, 16, 5))


def test_wavenet_fast_generation_equals_naive(zoo_bundle) -> None:
    bundle = zoo_bundle("wavenet")
    field = bundle.loop.receptive_field
    assert field >= 256
    with deploykit.load(bundle.path) as dep:
        fast = dep.sample(2, 7, dep.options(labels=np.array([0, 2]), steps=field + 60))
        naive = dep.sample(2, 7, dep.options(labels=np.array([0, 2]), steps=field + 60, fast=False))
        changed, _ = dependencies(dep.runners["conditionals"], bundle.loop, length=field + 8)
    np.testing.assert_array_equal(fast, naive)
    assert not np.tril(changed).any()  # changed[j, i]: output i never moves with x_j for j >= i
    assert changed[0, field] and not changed[0, field + 1]  # the receptive field is exactly `field` samples


def _dependence_of(runner, loop, pixel: tuple[int, int]) -> np.ndarray:
    """[H, W] bool: which input pixels move the logits of `pixel` (grey images)."""
    changed, _ = dependencies(runner, loop)
    _, h, w = loop.input_shape
    return changed[:, pixel[0] * w + pixel[1]].reshape(h, w)


def test_gated_pixelcnn_has_no_blind_spot_and_plain_one_has(zoo_bundle, tmp_path) -> None:
    pixel = (5, 2)
    before = np.arange(64).reshape(8, 8) < pixel[0] * 8 + pixel[1]
    gated = zoo_bundle("pixelcnn")
    with deploykit.load(gated.path) as dep:
        np.testing.assert_array_equal(_dependence_of(dep.runners["conditionals"], gated.loop, pixel), before)
    torch.manual_seed(0)
    plain = deploykit.export(ar.PixelCNN(layers=4), "pixelcnn", tmp_path / "plain")
    with deploykit.load(plain.path) as dep:
        seen = _dependence_of(dep.runners["conditionals"], plain.loop, pixel)
    assert not (seen & ~before).any()  # still autoregressive...
    blind = sorted((int(r), int(c)) for r, c in zip(*np.nonzero(before & ~seen)))
    assert blind == [(3, 7), (4, 6), (4, 7)]  # ...but blind to a triangle above-right, as van den Oord et al. show


@pytest.mark.parametrize("model_class", [ar.PixelCNN, ar.GatedPixelCNN])
def test_colour_pixelcnn_orders_r_g_b_within_a_pixel(model_class, tmp_path) -> None:
    torch.manual_seed(0)
    model = model_class(channels=3, size=5, levels=8, hidden=24, layers=3)
    bundle = deploykit.export(model, "pixelcnn", tmp_path / "colour")  # export runs the full AR check too
    with deploykit.load(bundle.path) as dep:
        changed, rank = dependencies(dep.runners["conditionals"], bundle.loop)
        image = dep.sample(3, 0)
    assert image.shape == (3, 3, 5, 5) and image.max() < 8
    centre = 2 * 5 + 2  # pixel (2, 2); flat index of channel c is c * 25 + centre
    r, g, b = (c * 25 + centre for c in range(3))
    assert changed[r, g] and changed[r, b] and changed[g, b]  # G sees R, B sees R and G of the same pixel
    assert not changed[g, r] and not changed[b, g] and not changed[r, r]
    assert not (changed & (rank[None, :] <= rank[:, None])).any()


def test_a_model_that_peeks_is_refused_at_export(tmp_path) -> None:
    torch.manual_seed(0)
    model = ar.PixelCNN(layers=1)
    model.first.mask[:, :, 3, 3] = 1  # mask B in the first layer: every pixel sees itself
    with pytest.raises(ExportError, match="'conditionals' is not autoregressive"):
        deploykit.export(model, "pixelcnn", tmp_path / "peek")
    assert not (tmp_path / "peek").exists()


def test_gaussian_made_exports_and_samples(tmp_path) -> None:
    torch.manual_seed(0)
    model = ar.MADE(6, (32,), distribution="gaussian", num_masks=2)
    bundle = deploykit.export(model, "made", tmp_path / "g")
    assert bundle.graphs["conditionals.0"].spec.output_names() == ["mu", "log_std", "log_prob"]
    with deploykit.load(bundle.path) as ort, deploykit.load(bundle.path, "torch", model=model) as ref:
        for k in range(2):
            np.testing.assert_allclose(ort.sample(4, 2, ort.options(ordering=k)), ref.sample(4, 2, ref.options(ordering=k)), atol=1e-5)
        x = np.random.default_rng(0).standard_normal((9, 6)).astype(np.float32)
        np.testing.assert_allclose(ort.log_prob(x), ref.log_prob(x), atol=1e-4)


def test_orderings_that_are_not_permutations_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"MADE ordering 1 is not a permutation of 0..3: 4 entries, repeated \[2\], missing \[3\]"):
        ar.MADE(4, (8,), orderings=[[0, 1, 2, 3], [0, 1, 2, 2]])
    model = ar.FVSBN(4)
    model.orderings = [[0, 1, 3]]  # a user's model whose attribute disagrees with its size
    with pytest.raises(ExportError, match=r"ordering 0 of FVSBN is not a permutation of 0..3: 3 entries, missing \[2\]"):
        deploykit.export(model, "fvsbn", tmp_path / "bad")


def test_wrong_images_levels_and_labels_are_clear_errors(zoo_bundle) -> None:
    bundle = zoo_bundle("pixelcnn")
    with deploykit.load(bundle.path) as dep:
        with pytest.raises(InputError, match=r"image.*\[batch, 1, 8, 8\]"):
            dep.log_prob(np.zeros((2, 1, 7, 8), np.int64), np.array([0, 1]))
        with pytest.raises(InputError, match=r"image.*4"):
            dep.log_prob(np.full((2, 1, 8, 8), 4, np.int64), np.array([0, 1]))
        with pytest.raises(InputError, match=r"label.*12"):
            dep.sample(2, 0, dep.options(labels=np.array(12)))
        with pytest.raises(InputError, match="class-conditional"):
            dep.log_prob(np.zeros((2, 1, 8, 8), np.int64))
        with pytest.raises(InputError, match="--steps is for diffusion, RBM, text-to-image, VRNN and WaveNet bundles"):
            dep.sample(2, 0, dep.options(steps=10))
    with deploykit.load(zoo_bundle("wavenet").path) as dep:
        with pytest.raises(InputError, match="--steps is 0"):
            dep.sample(1, 0, dep.options(steps=0))
        with pytest.raises(InputError, match=r"label.*3"):
            dep.sample(1, 0, dep.options(labels=np.array(3), steps=5))
