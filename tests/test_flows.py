"""Normalizing flows: log-determinants, both directions exported, in-graph vs host inversion, parity, errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import deploykit
from deploykit.errors import ExportError, InputError, NumericalError
from deploykit.models import flows, load_checkpoint, read_checkpoint, trained
from deploykit.models.data import level_digits, load_digits, toy_2d
from deploykit.runtimes.flows import dequantize

TOY = {"nice-moons": "moons", "realnvp-rings": "rings", "maf-moons": "moons", "iaf-moons": "moons"}
IMAGES = ["realnvp-digits", "glow-digits"]
FLOWS = [*TOY, *IMAGES]


def _train_data(name: str, n: int = 256) -> np.ndarray:
    """Points (2-D flows) or dequantized digits in [0, 1) (image flows) from the training split."""
    if name in TOY:
        return toy_2d(TOY[name], 4000, seed=0)[:n]
    return dequantize(level_digits(load_digits().x_train[:n], 17), 17, seed=0)


def _fresh(name: str, rng: np.random.Generator) -> np.ndarray:
    """Fresh random inputs: 2-D normals, or uniform images at another size (16 x 12) from the same export."""
    if name in TOY:
        return rng.standard_normal((33, 2)).astype(np.float32)
    return rng.random((3, 1, 16, 12), dtype=np.float32)


def _small_models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    models = {
        "nice": flows.NICE(couplings=3),
        "realnvp": flows.RealNVP(couplings=3),
        "maf": flows.MAF(dim=3, hidden=(16,), layers=2),
        "iaf": flows.MAF(dim=3, hidden=(16,), layers=2, inverse_autoregressive=True),
        "realnvp-image": flows.RealNVPImage(size=4, hidden=8),
        "glow": flows.Glow(size=4, hidden=8, steps=1),
        "glow-plain": flows.Glow(size=4, hidden=8, steps=1, lu=False),
    }
    for model in models.values():  # move off the identity start
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return models


@pytest.mark.parametrize("name", list(_small_models()))
def test_logabsdet_equals_autograd_jacobian_and_inverse_undoes_forward(name: str) -> None:
    model = _small_models()[name].double()
    x = torch.rand(3, *model.event_shape, dtype=torch.float64) * 0.9 + 0.05
    if name.startswith("glow"):
        model.reset_actnorm()
        model(x)
    z, logdet = model(x)
    back, inverse_logdet = model.inverse(z)
    torch.testing.assert_close(back, x, atol=1e-10, rtol=0)
    torch.testing.assert_close(inverse_logdet, -logdet, atol=1e-10, rtol=0)
    for i in range(len(x)):
        jac = torch.autograd.functional.jacobian(lambda v: model(v.view(1, *model.event_shape))[0].flatten(), x[i])
        jac = jac.reshape(z[0].numel(), x[0].numel())
        assert torch.linalg.slogdet(jac)[1].item() == pytest.approx(logdet[i].item(), abs=1e-9)


@pytest.mark.parametrize("name", FLOWS)
def test_log_prob_parity_on_training_and_fresh_inputs(name: str, zoo_bundle) -> None:
    """ORT log p(x) == torch's at batch 1 and 64 of training data and on fresh inputs (images: also 16x12)."""
    bundle = zoo_bundle(name)
    _, model, _ = load_checkpoint(trained(name))
    tol = bundle.tolerance
    data = _train_data(name)
    with deploykit.load(bundle.path) as dep:
        for x in (data[:1], data[:64], _fresh(name, np.random.default_rng(7))):
            with torch.no_grad():
                want = model.log_prob(torch.from_numpy(x)).numpy()
            np.testing.assert_allclose(dep.log_prob(x), want, atol=tol.atol, rtol=tol.rtol)


@pytest.mark.parametrize("name", FLOWS)
def test_round_trip_through_the_exported_graphs(name: str, zoo_bundle) -> None:
    """log_prob then sample returns x: |x - sample(log_prob(x).z)| <= 1e-4 on training data."""
    x = _train_data(name)
    with deploykit.load(zoo_bundle(name).path) as dep:
        z = dep.infer({"x": x}, role="log_prob")["z"]
        back = dep.infer({"z": z}, role="sample")["x"]
    assert z.shape == x.shape
    assert np.abs(back - x).max() <= 1e-4


@pytest.mark.parametrize("name", FLOWS)
def test_same_z_gives_same_x_in_ort_and_torch(name: str, zoo_bundle) -> None:
    bundle = zoo_bundle(name)
    with deploykit.load(bundle.path) as ort, deploykit.load(bundle.path, "torch") as ref:
        a, b = ort.sample(16, 3, ort.options(temperature=0.7)), ref.sample(16, 3, ref.options(temperature=0.7))
    assert a.shape == (16, *bundle.loop.event_shape)
    np.testing.assert_allclose(a, b, atol=bundle.tolerance.atol, rtol=bundle.tolerance.rtol)


def test_maf_in_graph_scan_equals_host_loop_and_iaf_density_likewise(zoo_bundle) -> None:
    maf, iaf = zoo_bundle("maf-moons"), zoo_bundle("iaf-moons")
    ops = [n.op_type for n in onnx.load(maf.path / "graphs" / "sample.onnx").graph.node]
    assert ops.count("Scan") == len(maf.loop.orderings) == 5  # the whole inversion in one session call
    with deploykit.load(maf.path) as dep:
        np.testing.assert_allclose(dep.sample(64, 1, dep.options(host=True)), dep.sample(64, 1), atol=1e-6, rtol=0)
    x = toy_2d("moons", 64, seed=5)
    with deploykit.load(iaf.path) as dep:
        np.testing.assert_allclose(dep.log_prob(x, host=True), dep.log_prob(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", FLOWS)
def test_zoo_metric_through_ort(name: str, zoo_bundle) -> None:
    """Test NLL (2-D) or bits/dim (digits, numpy dequantization noise) through ORT match the torch metric."""
    metrics = read_checkpoint(trained(name))["metrics"]
    with deploykit.load(zoo_bundle(name).path) as dep:
        if name in TOY:
            nll = -dep.log_prob(toy_2d(TOY[name], 1000, seed=1)).mean()
            assert nll == pytest.approx(metrics["test_nll_nats"], rel=1e-4)
        else:
            bits = dep.bits_per_dim(level_digits(load_digits().x_test, 17), seed=0).mean()
            assert bits == pytest.approx(metrics["test_bits_per_dim"], abs=0.02)  # another dequantization draw
            assert bits < 2.5  # log2(17) = 4.09 bits/dim for a uniform model


def test_flow_errors(zoo_bundle) -> None:
    with deploykit.load(zoo_bundle("glow-digits").path) as glow:
        with pytest.raises(InputError, match="temperature is 0.0, expected a number > 0"):
            glow.sample(4, 0, glow.options(temperature=0.0))
        with pytest.raises(InputError, match="'height' is 10, expected >= 4 and a multiple of 4"):
            glow.log_prob(np.full((1, 1, 10, 8), 0.5, np.float32))
        with pytest.raises(InputError, match="--size 10x8: height and width must be multiples of 4"):
            glow.sample(4, 0, glow.options(size=(10, 8)))
        assert glow.sample(2, 0, glow.options(size=(16, 12))).shape == (2, 1, 16, 12)
        with pytest.raises(InputError, match=r"'x' has values in \[16.0, 16.0\], expected values in \[0, 1\)"):
            glow.log_prob(np.full((1, 1, 8, 8), 16.0, np.float32))
        with pytest.raises(InputError, match="pixels must be integers in"):
            glow.bits_per_dim(np.full((1, 1, 8, 8), 17))
        with pytest.raises(InputError, match="Drop --host-loop"):
            glow.sample(2, 0, glow.options(host=True))
    with deploykit.load(zoo_bundle("maf-moons").path) as maf:
        with pytest.raises(NumericalError, match=r"sampling \(z -> x\) produced NaN/Inf .* lower --temperature"):
            maf.sample(64, 0, maf.options(temperature=1e36))
        with pytest.raises(InputError, match="Drop --host-loop"):
            maf.log_prob(np.zeros((1, 2), np.float32), host=True)


class _WrongInverse(nn.Module):
    """forward doubles x; inverse forgets to halve it."""

    def forward(self, x: torch.Tensor) -> flows.Result:
        return 2 * x, x.new_full((x.shape[0],), 2 * np.log(2.0))

    def inverse(self, z: torch.Tensor) -> flows.Result:
        return z, z.new_full((z.shape[0],), -2 * np.log(2.0))


def test_export_refuses_a_flow_whose_sample_graph_does_not_invert_log_prob(tmp_path) -> None:
    with pytest.raises(ExportError, match="'sample' does not invert 'log_prob'"):
        deploykit.export(flows.Flow(_WrongInverse(), (2,)), "realnvp", tmp_path / "b")
    assert not (tmp_path / "b").exists()


@pytest.mark.slow  # 17 s of export; the zoo Glow (LU 1x1 convolutions) exercises the same folding by default
def test_plain_glow_exports_with_w_inverse_and_logdet_folded(tmp_path) -> None:
    """A plain-W Glow (slogdet and inverse in torch) exports; the graph holds W^-1 as a constant and works at 8x8 and 12x16."""
    model = _small_models()["glow-plain"]
    model.reset_actnorm()
    model(torch.rand(64, 1, 4, 4))
    bundle = deploykit.export(model, "glow", tmp_path / "glow")
    inverse = torch.linalg.inv(model.transform.transforms[1].steps.transforms[1].transforms[1].weight.detach().double()).float()
    constants = [onnx.numpy_helper.to_array(i) for i in onnx.load(bundle.path / "graphs" / "sample.onnx").graph.initializer]
    assert any(c.size == 16 and np.allclose(c.reshape(4, 4), inverse.numpy(), atol=1e-6) for c in constants)
    rng = np.random.default_rng(0)
    with deploykit.load(bundle.path) as dep:
        for shape in ((5, 1, 8, 8), (2, 1, 12, 16)):
            x = rng.random(shape, dtype=np.float32)
            with torch.no_grad():
                want = model.log_prob(torch.from_numpy(x)).numpy()
            out = dep.infer({"x": x}, role="log_prob")
            np.testing.assert_allclose(out["log_prob"], want, atol=1e-4, rtol=1e-4)
            assert np.abs(dep.infer({"z": out["z"]}, role="sample")["x"] - x).max() < 1e-4
