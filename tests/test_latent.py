"""Latent-variable, diffusion and energy models: schedulers against the textbook formulas, denoiser and
whole-trajectory parity (torch vs ORT, same injected noise), in-graph == host loops, IWAE, RBM chains,
Hopfield retrieval, and the errors users hit."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

import deploykit
from deploykit.errors import InputError
from deploykit.models import load_checkpoint, trained
from deploykit.models.data import binarized_digits, load_digits, toy_2d
from deploykit.models.train_latent import corrupt, digit_patterns
from deploykit.runtimes.diffusion import IN_GRAPH_LIMIT, Denoiser, DiffusionOptions, scheduler_for
from deploykit.runtimes.schedulers import make_scheduler
from deploykit.runtimes.schedulers.ddim import DDIMScheduler
from deploykit.runtimes.schedulers.ddpm import DDPMScheduler
from deploykit.runtimes.schedulers.noise_schedule import alphas_cumprod, betas, zoo_config

# Whole-loop tolerances. Measured on the zoo DDPM (fp32, 8 samples): one denoiser call differs by
# ~1e-6; the final sample of DDPM-1000 by 1.3e-6 and of guided DDIM-50 (w = 3) by 1.9e-5. Guidance
# multiplies the cond - uncond difference, and deterministic DDIM carries every call's error to the
# end, so the guided loop is held to 1e-4, DDPM to 2e-5.
DDPM_LOOP_ATOL, GUIDED_DDIM_ATOL = 2e-5, 1e-4
CONFIGS = [zoo_config(s, t, c) for s in ("linear", "cosine") for t in (1000, 50) for c in (0.0, 1.0)]


def _draw(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c['beta_schedule']}-T{c['num_train_timesteps']}-clip{c['clip_sample']}")
def test_ddim_at_eta_one_is_ddpm_and_ddpm_is_the_textbook_posterior(config) -> None:
    ddpm, ddim = DDPMScheduler(config), DDIMScheduler(config | {"eta": 1.0})
    ddpm.set_timesteps(10)
    ddim.set_timesteps(10)
    x, eps, noise = _draw((6, 3), 0), _draw((6, 3), 1), _draw((6, 3), 2)
    for i in range(len(ddpm.timesteps)):
        np.testing.assert_allclose(ddpm.step(eps, i, x, noise), ddim.step(eps, i, x, noise), atol=2e-5)
    full = DDPMScheduler(config | {"clip_sample": False})
    total = config["num_train_timesteps"]
    full.set_timesteps(total)
    beta, bar = betas(config), alphas_cumprod(config)
    for t in (total - 1, 7, 1):  # Ho et al. eq. 11: mean = (x - beta / sqrt(1 - abar) eps) / sqrt(alpha)
        mean = (x - beta[t] / np.sqrt(1 - bar[t]) * eps) / np.sqrt(1 - beta[t])
        sigma = np.sqrt(beta[t] * (1 - bar[t - 1]) / (1 - bar[t]))
        np.testing.assert_allclose(full.step(eps, total - 1 - t, x, noise), mean + sigma * noise, rtol=1e-4, atol=1e-4)
    assert np.array_equal(full.step(eps, total - 1, x, noise), full.step(eps, total - 1, x, noise * 0))  # no noise at t = 0


def test_deterministic_ddim_is_the_textbook_update() -> None:
    config = zoo_config("cosine", 1000, 0.0)
    ddim = DDIMScheduler(config)
    ddim.set_timesteps(20)
    bar = alphas_cumprod(config)
    x, eps = _draw((4, 2), 3), _draw((4, 2), 4)
    t, prev = int(ddim.timesteps[3]), int(ddim.timesteps[4])
    x0 = (x - np.sqrt(1 - bar[t]) * eps) / np.sqrt(bar[t])
    expected = np.sqrt(bar[prev]) * x0 + np.sqrt(1 - bar[prev]) * eps
    np.testing.assert_allclose(ddim.step(eps, 3, x, _draw((4, 2), 5)), expected, rtol=1e-4, atol=1e-5)
    assert list(ddim.timesteps[:3]) == [950, 900, 850] and ddim.timesteps[-1] == 0
    assert betas(config).max() <= 0.999 and np.all(np.diff(bar) < 0)


def test_scheduler_errors_name_the_option_and_the_limit() -> None:
    allowed, schedule = ["ddpm", "ddim"], zoo_config("linear", 1000, 1.0)
    with pytest.raises(InputError, match="--steps is 0, expected at least 1"):
        make_scheduler("ddpm", allowed, schedule).set_timesteps(0)
    with pytest.raises(InputError, match="--steps is 1001, but this model was trained with 1000"):
        make_scheduler("ddim", allowed, schedule).set_timesteps(1001)
    with pytest.raises(InputError, match="--eta is 2.0, expected a value in"):
        make_scheduler("ddim", allowed, schedule, eta=2.0).set_timesteps(10)
    with pytest.raises(InputError, match="choose one of 'ddpm', 'ddim'"):
        make_scheduler("langevin", allowed, schedule)


def test_denoiser_step_parity_on_noised_digits(zoo_bundle) -> None:
    """One eps call per timestep on real x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, every label and the null label."""
    bundle = zoo_bundle("ddpm-digits")
    x0 = load_digits().x_test[:11] * 2 - 1
    bar = alphas_cumprod(zoo_config("linear", 1000, 1.0))
    labels = np.arange(11)  # 10 is the null label
    with deploykit.load(bundle.path) as ort_dep, deploykit.load(bundle.path, backend="torch") as torch_dep:
        for t in (999, 500, 100, 10, 0):
            x = (np.sqrt(bar[t]) * x0 + np.sqrt(1 - bar[t]) * _draw(x0.shape, t)).astype(np.float32)
            feeds = {"x": x, "t": np.full(11, t), "label": labels}
            a, b = ort_dep.infer(feeds, "denoiser")["eps"], torch_dep.infer(feeds, "denoiser")["eps"]
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("steps", "options", "atol"), [
    (1000, {"scheduler": "ddpm"}, DDPM_LOOP_ATOL),
    (50, {"scheduler": "ddim", "guidance": 3.0}, GUIDED_DDIM_ATOL),
], ids=["ddpm-1000", "ddim-50-guided"])
def test_whole_trajectory_ort_equals_torch_and_in_graph_equals_host(zoo_bundle, steps, options, atol) -> None:
    bundle = zoo_bundle("ddpm-digits")
    labels = np.arange(8) % 10
    with deploykit.load(bundle.path) as ort_dep, deploykit.load(bundle.path, backend="torch") as torch_dep:
        host = ort_dep.sample(8, 5, ort_dep.options(labels=labels, steps=steps, host=True, **options))
        graph = ort_dep.sample(8, 5, ort_dep.options(labels=labels, steps=steps, host=False, **options))
        reference = torch_dep.sample(8, 5, torch_dep.options(labels=labels, steps=steps, host=True, **options))
    np.testing.assert_allclose(host, reference, atol=atol)
    np.testing.assert_allclose(graph, host, atol=atol)
    assert np.abs(host).max() <= 1.0 + 1e-6  # DDPM's clipped x0; DDIM's last step returns x0


def test_guidance_batched_equals_two_calls_and_steers_the_class(zoo_bundle) -> None:
    with deploykit.load(zoo_bundle("ddpm-digits").path) as dep:
        loop, x = dep.bundle.loop, _draw((6, 1, 8, 8), 0)
        labels = np.arange(6)
        cond, null = {"label": labels}, {"label": np.full_like(labels, loop.num_classes)}
        batched, split = (Denoiser(dep.runner("denoiser"), 6, cond, null, 2.5, b)(x, 300) for b in (True, False))
        np.testing.assert_allclose(batched, split, atol=1e-5)
        labels = np.repeat(np.arange(10), 5)
        guided = dep.sample(50, 2, dep.options(labels=labels, host=True, scheduler="ddim", guidance=3.0))
        unguided = dep.sample(50, 2, dep.options(labels=labels, host=True, scheduler="ddim", guidance=0.0))
    with deploykit.load(zoo_bundle("cnn").path) as cnn:
        guided_acc = (cnn.infer({"image": (guided + 1) / 2})["logits"].argmax(1) == labels).mean()
        unguided_acc = (cnn.infer({"image": (unguided + 1) / 2})["logits"].argmax(1) == labels).mean()
    assert guided_acc >= 0.8 and unguided_acc <= 0.4, (guided_acc, unguided_acc)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"steps": 0}, "--steps is 0, expected at least 1"),
    ({"steps": 1001}, "trained with 1000 diffusion steps"),
    ({"labels": np.asarray(10)}, "--label 10 is out of range; this model has classes 0..9"),
    ({"scheduler": "ddpm", "eta": 0.5}, "--eta is an option of ddim; add --scheduler ddim"),
    ({"scheduler": "ddim", "karras": True}, "--karras is an option of euler, euler-a, heun, dpm\\+\\+2m"),
    ({"scheduler": "lms"}, "--scheduler 'lms' does not fit this bundle"),
    ({"guidance": float("nan")}, "--guidance is nan, expected a finite scale"),
])
def test_diffusion_sampling_errors(zoo_bundle, kwargs, message) -> None:
    with deploykit.load(zoo_bundle("ddpm-digits").path) as dep, pytest.raises(InputError, match=message):
        dep.sample(2, 0, dep.options(**kwargs))


def test_latent_diffusion_end_to_end_and_guidance_refused(zoo_bundle) -> None:
    bundle = zoo_bundle("latent-diffusion-digits")
    with deploykit.load(bundle.path) as ort_dep, deploykit.load(bundle.path, backend="torch") as torch_dep:
        a = ort_dep.sample(16, 1, ort_dep.options(scheduler="ddim"))
        b = torch_dep.sample(16, 1, torch_dep.options(host=True, scheduler="ddim"))
        with pytest.raises(InputError, match="--guidance needs a class-conditional model"):
            ort_dep.sample(2, 0, ort_dep.options(guidance=2.0))
    assert a.shape == (16, 64) and 0 <= a.min() and a.max() <= 1
    np.testing.assert_allclose(a, b, atol=1e-5)
    train, _ = binarized_digits(load_digits())
    assert 0.15 < a.mean() < 0.5 and abs(a.mean() - train.mean()) < 0.1  # ink coverage like the digits


def test_conditional_only_sampling_runs_n_rows_in_the_graph(zoo_bundle) -> None:
    """The sampler graph takes [labels] at guidance 1 (one call of n rows per step, like the host loop's
    denoiser) and [labels; null labels] when guided (2n); both reproduce the host loop."""
    feeds: list[tuple[str, tuple[int, ...]]] = []
    with deploykit.load(zoo_bundle("ddpm-digits").path) as dep:
        for role, runner in dep.runners.items():
            runner.infer = lambda f, *a, _infer=runner.infer, _role=role, **k: (
                feeds.append((_role, f["label"].shape)), _infer(f, *a, **k))[1]
        for w in (1.0, 3.0):
            feeds.clear()
            graph = dep.sample(3, 0, dep.options(steps=5, scheduler="ddim", guidance=w))
            assert feeds == [("sampler", (1 if w == 1 else 2, 3))]
            host = dep.sample(3, 0, dep.options(steps=5, scheduler="ddim", guidance=w, host=True))
            np.testing.assert_allclose(graph, host, atol=IN_GRAPH_LIMIT)


def test_a_sampler_taking_labels_alone_samples_conditional_only_on_the_host(zoo_bundle) -> None:
    """Sampler graphs exported with label [n] (the null row made inside) evaluate 2n rows at any w: at w = 1 the
    default is then the host loop, one denoiser call of n per step."""
    calls: list[str] = []
    with deploykit.load(zoo_bundle("ddpm-digits").path) as dep:
        sampler = dep.runners["sampler"]
        sampler.spec = replace(sampler.spec, inputs=tuple(replace(s, shape=("batch",)) if s.name == "label" else s
                                                          for s in sampler.spec.inputs))
        for role, runner in dep.runners.items():
            runner.infer = lambda *a, _infer=runner.infer, _role=role, **k: (calls.append(_role), _infer(*a, **k))[1]
        dep.sample(2, 0, dep.options(steps=5, scheduler="ddim"))
    assert calls == ["denoiser"] * 5


def test_a_scheduler_is_set_up_once_per_loop_and_options(zoo_bundle) -> None:
    """scheduler_for copies the loop's planned scheduler: same table, its own step() history, a fresh one for
    other options."""
    loop = zoo_bundle("ddpm-digits").loop
    first, again = (scheduler_for(loop, DiffusionOptions(scheduler="dpm++2m", steps=7)) for _ in range(2))
    other = scheduler_for(loop, DiffusionOptions(scheduler="dpm++2m", steps=8))
    assert first is not again and first.table is again.table and len(other.timesteps) == 8
    x = np.ones((1, 4), np.float32)
    first.step(x, 0, x, x)  # DPM-Solver++(2M) keeps the last x0
    assert again._history is None and first._history is not None


def test_annealed_langevin_lands_on_the_moons(zoo_bundle) -> None:
    bundle = zoo_bundle("ncsn-moons")
    with deploykit.load(bundle.path) as ort_dep, deploykit.load(bundle.path, backend="torch") as torch_dep:
        host = ort_dep.sample(300, 0, ort_dep.options(steps=30, host=True))
        graph = ort_dep.sample(300, 0, ort_dep.options(steps=30, host=False))
        reference = torch_dep.sample(300, 0, torch_dep.options(steps=30, host=True))
    np.testing.assert_allclose(host, reference, atol=1e-4)
    np.testing.assert_allclose(graph, host, atol=1e-4)
    moons = toy_2d("moons", 2000, seed=3)
    nearest = np.sqrt(((host[:, None] - moons[None]) ** 2).sum(-1)).min(1)
    gaussian = np.sqrt(((_draw((300, 2), 9)[:, None] - moons[None]) ** 2).sum(-1)).min(1)
    assert np.median(nearest) < 0.5 * np.median(gaussian), (np.median(nearest), np.median(gaussian))


@pytest.mark.parametrize("name", ["vae-digits", "cvae-digits"])
def test_iwae_through_ort_equals_torch_with_the_same_noise(zoo_bundle, name) -> None:
    _, model, payload = load_checkpoint(trained(name))
    data = load_digits()
    x = binarized_digits(data)[1][:40]
    labels = data.y_test[:40] if model.num_classes else None
    with deploykit.load(zoo_bundle(name).path) as dep:
        estimate = dep.iwae(x, k=64, seed=3, labels=labels)
        elbo = dep.iwae(x, k=1, seed=3, labels=labels)
        interpolation = dep.interpolate(6, seed=1)
    noise = torch.from_numpy(np.random.default_rng(3).standard_normal((64, 40, model.latent_dim), dtype=np.float32))
    with torch.no_grad():
        expected = model.iwae(torch.from_numpy(x), noise, None if labels is None else torch.from_numpy(labels)).numpy()
    np.testing.assert_allclose(estimate, expected, atol=1e-3, rtol=1e-5)  # sums of 64 log-likelihoods, float64 here
    assert estimate.mean() > elbo.mean()  # IWAE is the tighter bound
    assert interpolation.shape == (6, 64)
    assert abs(-estimate.mean() - payload["metrics"]["test_iwae64_nll_nats"]) < 3.0  # 40 test digits vs all


def test_vae_label_errors(zoo_bundle) -> None:
    with deploykit.load(zoo_bundle("cvae-digits").path) as dep:
        with pytest.raises(InputError, match="--label 12 is out of range; this model has classes 0..9"):
            dep.sample(4, 0, dep.options(labels=np.asarray(12)))
        with pytest.raises(InputError, match="an interpolation needs at least 2 points"):
            dep.interpolate(1)
    with deploykit.load(zoo_bundle("vae-digits").path) as dep, pytest.raises(InputError, match="unconditional"):
        dep.sample(4, 0, dep.options(labels=np.asarray(1)))


@pytest.mark.parametrize("name", ["rbm-digits", "grbm-digits"])
def test_gibbs_chain_identical_in_torch_ort_graph_and_host_loop(zoo_bundle, name) -> None:
    from deploykit.runtimes.energy import gibbs_chain

    bundle = zoo_bundle(name)
    with deploykit.load(bundle.path) as ort_dep, deploykit.load(bundle.path, backend="torch") as torch_dep:
        loop = bundle.loop
        graph = gibbs_chain(ort_dep.runner("gibbs"), loop, 16, 200, seed=4)
        host = gibbs_chain(ort_dep.runner("gibbs"), loop, 16, 200, seed=4, per_call=1)
        reference = gibbs_chain(torch_dep.runner("gibbs"), loop, 16, 200, seed=4)
    assert np.array_equal(graph["h_last"], reference["h_last"]) and np.array_equal(host["h_last"], graph["h_last"])
    if loop.visible_type == "bernoulli":
        assert np.array_equal(graph["v_last"], reference["v_last"]) and np.array_equal(host["v_last"], graph["v_last"])
    np.testing.assert_allclose(graph["visible_mean"], reference["visible_mean"], atol=1e-5)
    np.testing.assert_allclose(host["visible_mean"], graph["visible_mean"], atol=1e-5)


def test_hopfield_retrieves_corrupted_digits_like_torch(zoo_bundle) -> None:
    bundle = zoo_bundle("hopfield-digits")
    patterns = digit_patterns()
    noisy = corrupt(np.repeat(patterns, 5, 0), 0.1, seed=7)
    with deploykit.load(bundle.path) as ort_dep, deploykit.load(bundle.path, backend="torch") as torch_dep:
        found, reference = ort_dep.retrieve(noisy), torch_dep.retrieve(noisy)
        start_energy = ort_dep.infer({"state": noisy}, "update")["energy"]
        with pytest.raises(InputError, match="states must be \\[batch, 64\\] of -1/\\+1 values"):
            ort_dep.retrieve(noisy * 0.5)
    assert np.array_equal(found.states, reference.states) and np.array_equal(found.iterations, reference.iterations)
    assert found.converged.all() and (found.states == np.repeat(patterns, 5, 0)).all(1).mean() >= 0.9
    assert np.all(found.energy <= start_energy + 1e-5)  # retrieval descends the energy


def test_legacy_sampler_tables_reproduce_the_step_or_are_refused() -> None:
    """Bundles exported before the history buffer feed their 7-column Scan x0 = clip((x - a out) b),
    x_prev = p x0 + q x + r out + s noise: DDPM, DDIM and Langevin rows convert exactly; Heun's cannot."""
    schedule = zoo_config("linear", 1000, 1.0)
    x, out, noise = _draw((4, 3), 0), _draw((4, 3), 1), _draw((4, 3), 2)
    for name, options in (("ddpm", {}), ("ddim", {"eta": 0.5}), ("langevin", {})):
        config = {"sigmas": [1.0, 0.1], "step_size": 1e-3} if name == "langevin" else schedule
        sched = make_scheduler(name, [name], config, **options)
        sched.set_timesteps(5)
        for i, (a, b, clip, p, q, r, s) in enumerate(sched.legacy_table()):
            x0 = np.clip((x - a * out) * b, -clip, clip)
            np.testing.assert_allclose(p * x0 + q * x + r * out + s * noise, sched.step(out, i, x, noise), atol=1e-5)
    heun = make_scheduler("heun", ["heun"], schedule)
    heun.set_timesteps(5)
    with pytest.raises(InputError, match="this bundle's in-graph sampler predates it; add --host-loop"):
        heun.legacy_table()
