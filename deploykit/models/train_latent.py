"""Training loops for the latent-variable, diffusion and energy zoo: VAEs, DDPM, latent diffusion, NCSN,
RBMs and a Hopfield network, all on scikit-learn digits or two moons, each in seconds on 2 CPU cores."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .data import binarized_digits, load_digits, toy_2d
from .diffusion import LatentDiffusion
from .energy import RBM, Hopfield
from .train import OnStep, _fit

IWAE_SAMPLES = 64  # importance samples of the test log-likelihood estimate


def _labels(model: nn.Module, labels: np.ndarray) -> torch.Tensor | None:
    return torch.from_numpy(labels) if model.num_classes else None


def train_vae(model: nn.Module, steps: int, on_step: OnStep) -> dict[str, float]:
    """Negative ELBO (beta-weighted KL) on binarized digits, fresh reparameterization noise per batch.
    Returns the test negative ELBO and the IWAE estimate of the test NLL, in nats per digit."""
    data = load_digits()
    (train, test), gen = binarized_digits(data), torch.Generator().manual_seed(1)
    x, y = torch.from_numpy(train), _labels(model, data.y_train)

    def loss(i: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(len(i), model.latent_dim, generator=gen)
        return model.loss(x[i], noise, None if y is None else y[i]).mean()

    _fit(model, loss, len(x), steps, on_step, lr=2e-3, batch=128)
    xt, yt = torch.from_numpy(test), _labels(model, data.y_test)
    noise = torch.randn(IWAE_SAMPLES, len(xt), model.latent_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        elbo = -model.loss(xt, noise[0], yt).mean()
        iwae = model.iwae(xt, noise, yt).mean()
    return {"test_neg_elbo_nats": float(-elbo), f"test_iwae{IWAE_SAMPLES}_nll_nats": float(-iwae)}


def _denoising_loss(model: nn.Module, x0: torch.Tensor, labels: torch.Tensor | None, gen: torch.Generator
                    ) -> torch.Tensor:
    """E ||eps - eps_hat(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t)||^2, labels dropped to the null label 10% of the time."""
    bar = model.alphas_cumprod()
    t = torch.randint(0, model.training_steps, (len(x0),), generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    scale = bar[t].reshape(-1, *[1] * (x0.dim() - 1))
    x_t = scale.sqrt() * x0 + (1 - scale).sqrt() * eps
    if labels is not None:
        labels = torch.where(torch.rand(len(x0), generator=gen) < 0.1, model.num_classes, labels)
    return ((model(x_t, t, labels) - eps) ** 2).mean()


def train_ddpm(model: nn.Module, steps: int, on_step: OnStep) -> dict[str, float]:
    """An eps-prediction network on digits scaled to [-1, 1]; returns the test denoising loss."""
    data = load_digits()
    x = torch.from_numpy(data.x_train) * 2 - 1
    y = _labels(model, data.y_train)
    gen = torch.Generator().manual_seed(1)
    _fit(model, lambda i: _denoising_loss(model, x[i], None if y is None else y[i], gen), len(x), steps, on_step,
         lr=2e-3, batch=64)
    with torch.no_grad():
        test = _denoising_loss(model, torch.from_numpy(data.x_test) * 2 - 1, _labels(model, data.y_test),
                               torch.Generator().manual_seed(2))
    return {"test_eps_mse": float(test)}


def train_latent_diffusion(model: LatentDiffusion, vae_state: dict[str, torch.Tensor], steps: int, on_step: OnStep
                           ) -> dict[str, float]:
    """Latent diffusion over a trained VAE: the denoiser learns the VAE's posterior means of the training
    digits divided by their standard deviation (stored as `latent_scale`). Returns the test denoising loss."""
    model.vae.load_state_dict(vae_state)
    data = load_digits()
    train, test = binarized_digits(data)
    with torch.no_grad():
        mu = model.vae.encode(torch.from_numpy(train))[0]
        model.latent_scale.fill_(float(mu.std()))
        latents, test_latents = mu / model.latent_scale, model.vae.encode(torch.from_numpy(test))[0] / model.latent_scale
    denoiser, gen = model.denoiser, torch.Generator().manual_seed(1)
    _fit(denoiser, lambda i: _denoising_loss(denoiser, latents[i], None, gen), len(latents), steps, on_step,
         lr=2e-3, batch=256)
    model.eval()
    with torch.no_grad():
        return {"test_eps_mse": float(_denoising_loss(denoiser, test_latents, None, torch.Generator().manual_seed(2)))}


def train_score(model: nn.Module, steps: int, on_step: OnStep) -> dict[str, float]:
    """Denoising score matching on two moons: sigma_i^2 ||s(x + sigma_i n, i) + n / sigma_i||^2 over random levels."""
    train, test = torch.from_numpy(toy_2d("moons", 4000, seed=0)), torch.from_numpy(toy_2d("moons", 1000, seed=1))
    gen = torch.Generator().manual_seed(1)

    def loss(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        level = torch.randint(0, len(model.sigmas), (len(x),), generator=gen)
        sigma, noise = model.sigmas[level][:, None], torch.randn(x.shape, generator=gen)
        return ((sigma * model(x + sigma * noise, level) + noise) ** 2).sum(-1).mean()

    _fit(model, lambda i: loss(train[i], gen), len(train), steps, on_step, lr=2e-3, batch=256)
    with torch.no_grad():
        return {"test_dsm_loss": float(loss(test, torch.Generator().manual_seed(2)))}


def train_rbm(model: RBM, steps: int, on_step: OnStep) -> dict[str, float]:
    """Contrastive divergence (CD-1, as the free-energy difference) on binarized digits (Bernoulli visibles)
    or digits in [0, 1] with per-pixel sigma (Gaussian visibles). Returns the test one-step reconstruction MSE."""
    data = load_digits()
    if model.visible_type == "gaussian":
        train, test = (torch.from_numpy(x.reshape(len(x), -1)) for x in (data.x_train, data.x_test))
        model.sigma.copy_(train.std(0).clamp_min(0.05))
        model.visible_bias.data.copy_(train.mean(0))
    else:
        train, test = (torch.from_numpy(x) for x in binarized_digits(data))
    gen = torch.Generator().manual_seed(1)

    def reconstruct(v: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        noise = torch.randn(v.shape, generator=gen) if model.visible_type == "gaussian" else torch.rand(v.shape, generator=gen)
        return model.gibbs_step(v, torch.rand(len(v), model.hidden, generator=gen), noise)

    def loss(i: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            negative = reconstruct(train[i], gen)[0]
        return (model.free_energy(train[i]) - model.free_energy(negative)).mean()

    _fit(model, loss, len(train), steps, on_step, lr=1e-2 if model.visible_type == "bernoulli" else 2e-3, batch=64)
    with torch.no_grad():
        mean = reconstruct(test, torch.Generator().manual_seed(2))[2]
    return {"test_reconstruction_mse": float(((mean - test) ** 2).mean())}


def digit_patterns() -> np.ndarray:
    """The ten class-mean digits, thresholded at half intensity, as +-1 patterns [10, 64]."""
    data = load_digits()
    means = np.stack([data.x_train[data.y_train == k].reshape(-1, 64).mean(0) for k in range(10)])
    return np.where(means > 0.5 * means.max(1, keepdims=True), 1.0, -1.0)


def corrupt(patterns: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Patterns with `fraction` of their units flipped (a fresh random subset per row)."""
    rng = np.random.default_rng(seed)
    flips = rng.random(patterns.shape).argsort(1) < round(fraction * patterns.shape[1])
    return np.where(flips, -patterns, patterns).astype(np.float32)


def train_hopfield(model: Hopfield, on_step: OnStep) -> dict[str, float]:
    """Store the ten digit patterns; returns how often a pattern with 10% of its units flipped is recovered."""
    patterns = digit_patterns()
    model.store(patterns)
    if on_step:
        on_step(1, 1)
    state = torch.from_numpy(corrupt(np.repeat(patterns, 20, 0), 0.1, seed=0))
    with torch.no_grad():
        for _ in range(model.units):
            state = model(state)[0]
    recovered = (state.numpy() == np.repeat(patterns, 20, 0)).all(1)
    return {"recovered_from_10pct_flips": float(recovered.mean())}
