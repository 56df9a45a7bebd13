"""The zoo: reference models for every family, trained in seconds on data that ships with scikit-learn.

Checkpoints are plain dicts (config, state dict, metrics) saved with torch.save and loaded with
weights_only=True. Trained zoo models are cached under $DEPLOYKIT_HOME (default ~/.cache/deploykit).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError, choices
from . import (
    autoregressive,
    diffusion,
    energy,
    feedforward,
    flows,
    gan,
    recurrent,
    train,
    train_autoregressive,
    train_flows,
    train_latent,
    train_recurrent,
    transformer,
    vae,
)
from .data import load_digits

CHECKPOINT_FORMAT = "deploykit-checkpoint/1"
OnStep = Callable[[int, int], None] | None


@dataclass(frozen=True)
class ZooEntry:
    """A reference model: how to build it, which family exports it, how to train it."""

    name: str
    family: str
    description: str
    build: Callable[..., nn.Module]
    fit: Callable[[nn.Module, int, OnStep], dict[str, float]]  # (model, steps, on_step) -> test metrics
    config: dict[str, Any] = field(default_factory=dict)
    steps: int | None = None  # the training loop's steps; None: no step loop (fit ignores its steps)

    def create(self) -> nn.Module:
        """A fresh, untrained instance (deterministic initialisation)."""
        torch.manual_seed(0)
        return self.build(**self.config)


def _classifier(flatten: bool) -> Callable[[nn.Module, int, OnStep], dict[str, float]]:
    return lambda m, n, cb: train.train_classifier(m, load_digits(), n, flatten, cb)


def _gan(conditional: bool) -> Callable[[nn.Module, int, OnStep], dict[str, float]]:
    return lambda g, n, cb: train.train_gan(g, gan.Discriminator(num_classes=10 if conditional else 0), load_digits(), n, cb)


def _cyclegan(g_ab: nn.Module, steps: int, on_step: OnStep) -> dict[str, float]:
    g_ba = gan.CycleGANGenerator()
    return train.train_cyclegan(
        g_ab, g_ba, gan.PatchDiscriminator(), gan.PatchDiscriminator(), load_digits(), steps, on_step
    )


def _weights_of(name: str, model: nn.Module, steps: int, on_step: OnStep) -> dict[str, float]:
    """Load the trained weights (and metrics) of zoo model `name` into `model`, training it first if needed."""
    payload = read_checkpoint(trained(name, on_step))
    model.load_state_dict(payload["state_dict"])
    return dict(payload["metrics"])


GPT_CONFIG = {"vocab": train_recurrent.lm_vocab(), "dim": 64, "positions": "sinusoidal", "dropout": 0.3}
ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry("mlp", "mlp", "MLP digit classifier (BatchNorm, Dropout, weight norm)", feedforward.MLP, _classifier(True), steps=600),
        ZooEntry("cnn", "cnn", "CNN digit classifier (stride, dilation, pooling, residual, 1x1)", feedforward.CNN, _classifier(False), steps=600),
        ZooEntry(
            "unet",
            "fcn",
            "U-Net digit-class segmentation (transposed conv, unpooling, nearest/bilinear, skips)",
            feedforward.UNet,
            lambda m, n, cb: train.train_segmenter(m, load_digits(), n, cb),
            steps=500,
        ),
        ZooEntry(
            "autoencoder",
            "autoencoder",
            "deterministic autoencoder of digits, 12-d code",
            feedforward.AutoEncoder,
            lambda m, n, cb: train.train_autoencoder(m, load_digits(), n, cb),
            steps=1500,
        ),
        ZooEntry("dcgan", "dcgan", "DCGAN generator of 8x8 digits", gan.DCGANGenerator, _gan(False), steps=1500),
        ZooEntry("cgan", "cgan", "conditional GAN generator of 8x8 digits (label input)", gan.ConditionalGenerator, _gan(True), steps=1500),
        ZooEntry("cyclegan", "cyclegan", "CycleGAN generator: digits -> inverted digits, unpaired", gan.CycleGANGenerator, _cyclegan, steps=300),
        ZooEntry("lstm-denoiser", "rnn", "2-layer LSTM cleaning noisy tones sample by sample (streamable)",
                 recurrent.StreamingDenoiser, lambda m, n, cb: train_recurrent.train_denoiser(m, n, cb), steps=400),
        ZooEntry("char-lm", "rnn-lm", "character LSTM language model on the Zen of Python and stdlib docstrings",
                 recurrent.CharLM, lambda m, n, cb: train_recurrent.train_char_lm(m, n, cb),
                 {"vocab": train_recurrent.lm_vocab()}, steps=600),
        ZooEntry("seq2seq", "seq2seq", "bi-GRU encoder, GRU decoder with attention: reverses digit strings",
                 recurrent.Seq2Seq, lambda m, n, cb: train_recurrent.train_seq2seq(m, n, cb), steps=800),
        ZooEntry("vrnn", "vrnn", "variational RNN generating noisy 2-D orbits",
                 recurrent.VRNN, lambda m, n, cb: train_recurrent.train_vrnn(m, n, cb), steps=600),
        ZooEntry("gpt", "gpt", "2-layer causal transformer (sinusoidal positions) on the char-LM text, KV cache",
                 transformer.GPT, lambda m, n, cb: train_recurrent.train_gpt(m, n, cb), GPT_CONFIG, steps=400),
        ZooEntry("gpt-nocache", "gpt-nocache", "the zoo GPT's weights exported without its cache (full recompute)",
                 transformer.GPT, lambda m, n, cb: _weights_of("gpt", m, n, cb), GPT_CONFIG),
        ZooEntry("transformer-seq2seq", "transformer-seq2seq", "encoder-decoder transformer reversing digit strings",
                 transformer.TransformerSeq2Seq, lambda m, n, cb: train_recurrent.train_seq2seq(m, n, cb), steps=800),
        ZooEntry("fvsbn", "fvsbn", "fully visible sigmoid belief net on binarized digits",
                 autoregressive.FVSBN, lambda m, n, cb: train_autoregressive.train_binary(m, n, cb, lr=1e-2), {"image_shape": [1, 8, 8]}, steps=1500),
        ZooEntry("nade", "nade", "NADE (64 hidden) on binarized digits",
                 autoregressive.NADE, lambda m, n, cb: train_autoregressive.train_binary(m, n, cb), {"image_shape": [1, 8, 8]}, steps=1500),
        ZooEntry("made", "made", "MADE order-agnostic ensemble of 4 orderings on binarized digits",
                 autoregressive.MADE, lambda m, n, cb: train_autoregressive.train_binary(m, n, cb),
                 {"num_masks": 4, "image_shape": [1, 8, 8]}, steps=2000),
        ZooEntry("pixelcnn", "pixelcnn", "class-conditional gated PixelCNN on 4-level digits",
                 autoregressive.GatedPixelCNN, lambda m, n, cb: train_autoregressive.train_pixelcnn(m, n, cb),
                 {"num_classes": 10, "hidden": 32}, steps=500),
        ZooEntry("wavenet", "wavenet", "WaveNet (receptive field 256) on 8 kHz tone mixtures, conditioned on tone count",
                 autoregressive.WaveNet, lambda m, n, cb: train_autoregressive.train_wavenet(m, n, cb, length=384),
                 {"num_classes": 3, "residual": 64, "skip": 128}, steps=200),
        ZooEntry("nice-moons", "nice", "NICE (4 additive couplings + scaling) on two moons",
                 flows.NICE, lambda m, n, cb: train_flows.train_toy_flow(m, "moons", n, cb), steps=1500),
        ZooEntry("realnvp-rings", "realnvp", "RealNVP (6 affine couplings) on two rings",
                 flows.RealNVP, lambda m, n, cb: train_flows.train_toy_flow(m, "rings", n, cb), steps=1500),
        ZooEntry("maf-moons", "maf", "MAF (5 Gaussian MADE layers) on two moons",
                 flows.MAF, lambda m, n, cb: train_flows.train_toy_flow(m, "moons", n, cb), steps=1500),
        ZooEntry("iaf-moons", "iaf", "IAF (5 Gaussian MADE layers) on two moons, fitted by maximum likelihood",
                 flows.MAF, lambda m, n, cb: train_flows.train_toy_flow(m, "moons", n, cb), {"inverse_autoregressive": True}, steps=1500),
        ZooEntry("realnvp-digits", "realnvp", "multi-scale RealNVP on dequantized 17-level digits",
                 flows.RealNVPImage, lambda m, n, cb: train_flows.train_image_flow(m, n, cb), steps=800),
        ZooEntry("glow-digits", "glow", "two-scale Glow (LU 1x1 convs, learned split prior) on dequantized 17-level digits",
                 flows.Glow, lambda m, n, cb: train_flows.train_image_flow(m, n, cb), steps=800),
        ZooEntry("vae-digits", "vae", "VAE (8-d latent, Bernoulli pixels) on binarized digits",
                 vae.VAE, lambda m, n, cb: train_latent.train_vae(m, n, cb), steps=1500),
        ZooEntry("cvae-digits", "vae", "conditional VAE (label into encoder and decoder) on binarized digits",
                 vae.VAE, lambda m, n, cb: train_latent.train_vae(m, n, cb), {"num_classes": 10}, steps=1500),
        ZooEntry("ddpm-digits", "ddpm", "class-conditional DDPM U-Net (1000 linear steps, null label for guidance) on 8x8 digits",
                 diffusion.UNetDenoiser, lambda m, n, cb: train_latent.train_ddpm(m, n, cb), steps=1000),
        ZooEntry("latent-diffusion-digits", "latent-diffusion", "diffusion over the zoo VAE's latents, decoded by its decoder",
                 diffusion.LatentDiffusion, lambda m, n, cb: train_latent.train_latent_diffusion(
                     m, read_checkpoint(trained("vae-digits", cb))["state_dict"], 1500, cb)),  # loads the VAE first
        ZooEntry("ncsn-moons", "ncsn", "noise-conditional score network (10 sigmas) on two moons, annealed Langevin",
                 diffusion.ScoreNet, lambda m, n, cb: train_latent.train_score(m, n, cb), steps=1500),
        ZooEntry("rbm-digits", "rbm", "Bernoulli-Bernoulli RBM (64 hidden) on binarized digits, CD-1",
                 energy.RBM, lambda m, n, cb: train_latent.train_rbm(m, n, cb), steps=1000),
        ZooEntry("grbm-digits", "rbm", "Gaussian-Bernoulli RBM (64 hidden) on digit intensities, CD-1",
                 energy.RBM, lambda m, n, cb: train_latent.train_rbm(m, n, cb), {"visible_type": "gaussian"}, steps=1000),
        ZooEntry("hopfield-digits", "hopfield", "Hopfield network storing the ten class-mean binarized digits",
                 energy.Hopfield, lambda m, n, cb: train_latent.train_hopfield(m, cb)),
        ZooEntry("vit", "vit", "vision transformer digit classifier (2x2 patches, class token)",
                 transformer.ViT, _classifier(False), steps=500),
    ]
}


DIGIT_CLASSIFIERS = {"mlp": True, "cnn": False, "vit": False}  # zoo classifiers of the digits -> flat inputs


def test_split(name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(inputs, labels) of the held-out digits a zoo classifier is scored on; None for other zoo models."""
    if name not in DIGIT_CLASSIFIERS:
        return None
    digits = load_digits()
    return (digits.x_test.reshape(len(digits.x_test), -1) if DIGIT_CLASSIFIERS[name] else digits.x_test), digits.y_test


def get_entry(name: str) -> ZooEntry:
    """Zoo entry by name, or InputError listing the names."""
    if name not in ZOO:
        raise InputError(f"unknown zoo model {name!r}; choose one of {choices(ZOO)} (see `deploykit zoo list`).")
    return ZOO[name]


def home() -> Path:
    """deploykit's cache directory ($DEPLOYKIT_HOME or ~/.cache/deploykit)."""
    return Path(os.environ.get("DEPLOYKIT_HOME") or Path.home() / ".cache" / "deploykit")


def cached_checkpoint(name: str) -> Path:
    """Where the trained zoo model `name` is cached."""
    return home() / "zoo" / f"{name}.pt"


def train_zoo(name: str, out: str | os.PathLike[str], on_step: OnStep = None) -> dict[str, float]:
    """Train zoo model `name` and write its checkpoint to `out` atomically; return its test metrics."""
    entry = get_entry(name)
    torch.manual_seed(0)
    model = entry.create()
    metrics = entry.fit(model, entry.steps or 0, on_step)
    write_checkpoint(out, model, zoo=name, family=entry.family, config=entry.config, metrics=metrics)
    return metrics


def write_checkpoint(out: str | os.PathLike[str], model: nn.Module, **fields: Any) -> None:
    """Write `model`'s weights and `fields` (a zoo model's name, family, config and metrics; or the factory that
    rebuilds it; pruning) as a deploykit checkpoint to `out`, atomically."""
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": CHECKPOINT_FORMAT, **fields, "state_dict": model.state_dict()}
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a `zoo train` checkpoint safely (weights_only=True) and check its format."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"checkpoint '{p}' does not exist; train one with `deploykit zoo train NAME --out {p}`.")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"checkpoint '{p}' could not be read ({str(exc).splitlines()[0][:200]}).") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise InputError(
            f"'{p}' is not a deploykit checkpoint (expected format {CHECKPOINT_FORMAT}); "
            "for your own model use a `package.module:factory` source instead."
        )
    return payload


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[ZooEntry, nn.Module, dict[str, Any]]:
    """(entry, model with trained weights in eval mode, checkpoint payload)."""
    payload = read_checkpoint(path)
    if isinstance(payload.get("factory"), str):
        raise InputError(f"checkpoint '{path}' holds weights for your factory {payload['factory']!r}; load it as "
                         f"`{payload['factory']}@{path}` with --family {payload.get('family', 'FAMILY')}.")
    entry = get_entry(payload.get("zoo", ""))
    config, weights = payload.get("config"), payload.get("state_dict")
    if not isinstance(config, dict) or not isinstance(weights, dict):
        raise InputError(f"checkpoint '{path}' lacks its config or state_dict; re-train it with `deploykit zoo train`.")
    try:
        model = entry.build(**config)
        if payload.get("pruning"):  # weight norm folded, channels removed: the pruned architecture first
            from ..pruning import pruned_architecture

            model = pruned_architecture(model, payload["pruning"], weights)
        model.load_state_dict(weights)
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:  # unknown option, wrong or missing tensors
        first = str(exc).strip().splitlines()[0][:300]
        raise InputError(f"checkpoint '{path}' does not match zoo model '{entry.name}' ({type(exc).__name__}: {first}); "
                         "it was written by another version or edited; re-train it with `deploykit zoo train`.") from exc
    return entry, model.eval(), payload


def trained(name: str, on_step: OnStep = None) -> Path:
    """Path of the cached trained checkpoint of `name`, training it first if absent."""
    path = cached_checkpoint(name)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with exclusive(path.with_name(f".{path.name}.lock")):  # another process training it: wait, then reuse
            if not path.is_file():
                train_zoo(name, path, on_step)
    return path


@contextmanager
def exclusive(lock: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on the file `lock` (POSIX flock): a process about to do what another is doing
    (training a checkpoint, exporting a test bundle) waits, then reuses it. Without flock there is no lock: what they
    write is written atomically, so processes at the same work at once only repeat it."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the handle closes, or the process dies
        yield
