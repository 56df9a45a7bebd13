"""A loaded bundle with its runners: what `deploykit.load` returns."""

from __future__ import annotations

import os
from types import TracebackType
from typing import Any

import numpy as np

from ..bundle import Bundle, load_bundle
from ..errors import InputError, choices
from . import make_runners
from .autoregressive import MASKED_KINDS, log_prob, sample_dimensionwise, sample_nade, sample_raster, sample_wavenet
from .base import Runner, RunnerOptions
from .diffusion import DiffusionOptions, OnStep, sample_diffusion
from .energy import Retrieval, random_states, retrieve, sample_rbm
from .flows import bits_per_dim, flow_log_prob, sample_flow
from .generator import sample_generator
from .loops import LANGUAGE_MODELS, TRANSLATION_MODELS, language_model, translation_model
from .recurrent import Stream, sample_vrnn
from .tokens import SamplingConfig, beam_search, decode_tokens, encode_text, generate
from .vae import interpolate, iwae, sample_vae

SAMPLED = ("generator", "vrnn", "flow", "diffusion", "vae", "gibbs", "hopfield", *MASKED_KINDS)  # loop kinds `sample` draws from


class Deployment:
    """Runners for every role of a bundle on one backend; a context manager that activates them all."""

    def __init__(self, bundle: Bundle, runners: dict[str, Runner]) -> None:
        self.bundle = bundle
        self.runners = runners

    def runner(self, role: str | None = None) -> Runner:
        """The runner of `role` (optional when the bundle has a single graph)."""
        if role is None and len(self.runners) == 1:
            return next(iter(self.runners.values()))
        if role not in self.runners:
            raise InputError(f"role {role!r} is not in this bundle; choose one of {choices(self.runners)}.")
        return self.runners[role]

    def infer(self, feeds: dict[str, np.ndarray], role: str | None = None) -> dict[str, np.ndarray]:
        """Run one graph on named numpy inputs."""
        return self.runner(role).infer(feeds)

    def _loop(self, *kinds: str) -> dict[str, Any]:
        """The bundle's loop config, or InputError when its kind is not one of `kinds`."""
        loop = self.bundle.loop
        if loop.get("kind") not in kinds:
            hint = " A bidirectional rnn needs the whole sequence: run its `sequence` graph." if loop.get("kind") == "sequence" else ""
            raise InputError(
                f"bundle family '{self.bundle.family}' has loop '{loop.get('kind')}'; this needs a bundle "
                f"whose loop is {' or '.join(kinds)} (see `deploykit inspect`).{hint}"
            )
        return loop

    def sample(
        self,
        n: int,
        seed: int = 0,
        labels: np.ndarray | None = None,
        steps: int | None = None,
        ordering: int = 0,
        fast: bool = True,
        temperature: float = 1.0,
        size: tuple[int, int] | None = None,
        host: bool = False,
        diffusion: DiffusionOptions | None = None,
        on_step: OnStep = None,
    ) -> np.ndarray:
        """`n` samples from the bundle's loop with injected seeded noise.

        Generators: images. VRNN: trajectories [n, steps, x_dim]. FVSBN/MADE/NADE: [n, D] (MADE:
        the mask set `ordering`). PixelCNN: integer images [n, C, H, W]. WaveNet: mu-law codes
        [n, steps] (default one second), by fast generation or, with fast=False, naively. Flows:
        x [n, *event] from z ~ N(0, temperature^2), image flows at any `size` (H, W) their
        squeezes divide; MAF with host=True inverts on the host instead of in the graph.
        Diffusion: `steps` denoising steps of the `diffusion` options' scheduler, in the sampler
        graph or (host=True) one denoiser call per step; latent diffusion decodes to pixels.
        VAE: decoded prior samples. RBM: E[v | h] after `steps` Gibbs steps (host=True: one call
        per step). Hopfield: fixed points reached from random states. `on_step(done, total)`
        reports progress of diffusion loops.
        """
        loop = self._loop(*SAMPLED)
        kind = loop["kind"]
        if kind != "flow" and (temperature != 1.0 or size is not None):
            raise InputError("--temperature and --size are for flow bundles.")
        if host and kind not in ("flow", "diffusion", "gibbs"):
            raise InputError("--host-loop is for flow, diffusion and RBM bundles (host loop instead of the in-graph one).")
        if diffusion is not None and kind != "diffusion":
            raise InputError("--scheduler, --eta and --guidance are for diffusion bundles.")
        if ordering and kind != "dimensionwise":
            raise InputError("--ordering picks a MADE mask set; this bundle has one ordering.")
        if not fast and kind != "wavenet":
            raise InputError("--naive is for WaveNet bundles (naive vs fast generation).")
        if steps is not None and kind not in ("vrnn", "wavenet", "diffusion", "gibbs"):
            raise InputError(f"a '{kind}' loop draws fixed-size samples; --steps is for VRNN and WaveNet lengths, "
                             "diffusion and Gibbs steps.")
        if labels is not None and kind in ("vrnn", "dimensionwise", "nade", "flow", "gibbs", "hopfield"):
            raise InputError(f"a '{kind}' bundle is unconditional; drop --label.")
        if kind == "diffusion":
            return sample_diffusion(self.runners, loop, n, seed, labels, steps, host, diffusion or DiffusionOptions(), on_step)
        if kind == "vae":
            return sample_vae(self.runners, loop, n, seed, labels)
        if kind == "gibbs":
            return sample_rbm(self.runner("gibbs"), loop, n, seed, steps, 1 if host else None)
        if kind == "hopfield":
            return self.retrieve(random_states(loop, n, seed)).states
        if kind == "flow":
            return sample_flow(self.runners, loop, n, seed, temperature, size, host)
        if kind == "vrnn":
            return sample_vrnn(self.runner(loop["role"]), loop, n, steps, seed)
        if kind == "dimensionwise":
            return sample_dimensionwise(self.runners, loop, n, seed, ordering)
        if kind == "nade":
            return sample_nade(self.runners, loop, n, seed)
        if kind == "raster":
            return sample_raster(self.runners, loop, n, seed, labels)
        if kind == "wavenet":
            return sample_wavenet(self.runners, loop, n, int(loop["sample_rate"]) if steps is None else steps, seed, labels, fast)
        return sample_generator(self.runner(), loop, n, seed, labels)

    def interpolate(self, n: int, seed: int = 0, labels: np.ndarray | None = None) -> np.ndarray:
        """VAE decodings [n, D] along the slerp between two seeded prior latents."""
        return interpolate(self.runners, self._loop("vae"), n, seed, labels)

    def iwae(self, x: np.ndarray, k: int = 64, seed: int = 0, labels: np.ndarray | None = None) -> np.ndarray:
        """VAE: the k-sample importance-weighted estimate of log p(x) in nats, per example."""
        return iwae(self.runners, self._loop("vae"), x, k, seed, labels)

    def retrieve(self, states: np.ndarray, max_iterations: int | None = None) -> Retrieval:
        """Hopfield: synchronous updates from +-1 `states` [batch, units] until fixed points."""
        return retrieve(self.runner("update"), self._loop("hopfield"), states, max_iterations)

    def log_prob(self, x: np.ndarray, labels: np.ndarray | None = None, host: bool = False) -> np.ndarray:
        """log p(x) in nats per example for a masked autoregressive bundle (ensembles average p over
        orderings) or a flow (IAF with host=True: inverted on the host instead of in the graph)."""
        loop = self._loop("flow", *MASKED_KINDS)
        if loop["kind"] == "flow":
            return flow_log_prob(self.runners, loop, x, host)["log_prob"]
        if host:
            raise InputError("host=True is for flow bundles (IAF density on the host).")
        return log_prob(self.runners, loop, x, labels)

    def bits_per_dim(self, pixels: np.ndarray, seed: int = 0) -> np.ndarray:
        """Bits per dimension of integer images under a dequantized image flow, per example."""
        return bits_per_dim(self.runners, self._loop("flow"), pixels, seed)

    def generate(self, prompts: list[str], config: SamplingConfig, seed: int = 0) -> list[str]:
        """Continue each text prompt with a language model (recurrent, KV-cached or full recompute)."""
        loop = self._loop(*LANGUAGE_MODELS)
        ids = [encode_text(p, loop["vocab"]) for p in prompts]
        out = generate(language_model(self.runners, loop), ids, config, seed)
        return [decode_tokens(t, loop["vocab"]) for t in out]

    def translate(self, sources: list[str], beams: int = 1) -> list[str]:
        """Decode each source string with an encoder-decoder bundle: greedy (beams=1, batched) or beam search."""
        loop = self._loop(*TRANSLATION_MODELS)
        model = translation_model(self.runners, loop)
        ids = [encode_text(s, loop["src_vocab"], "source") for s in sources]
        limit, eos = int(loop["max_target_length"]), int(loop["eos"])
        if beams == 1:
            out = generate(model, ids, SamplingConfig(temperature=0.0, max_new_tokens=limit, stop=(eos,)))
        else:
            out = [beam_search(model, i, beams, limit, eos)[0] for i in ids]
        return [decode_tokens(t, loop["tgt_vocab"]) for t in out]

    def stream(self, streams: int = 1) -> Stream:
        """A Stream over the `chunk` graph keeping state for `streams` independent streams."""
        loop = self._loop("stream")
        return Stream(self.runner(loop["role"]), loop, streams)

    def __enter__(self) -> Deployment:
        for runner in self.runners.values():
            runner.activate()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for runner in self.runners.values():
            runner.deactivate()


def load(
    path: str | os.PathLike[str],
    backend: str = "ort-cpu",
    options: RunnerOptions | None = None,
    model: Any = None,
) -> Deployment:
    """Validate a bundle and build its runners on `backend` (ort-cpu, ort-cuda, ort-trt or torch)."""
    bundle = load_bundle(path)
    return Deployment(bundle, make_runners(bundle, backend, options, model))
