"""A loaded bundle with its runners: what `deploykit.load` returns."""

from __future__ import annotations

import os
from types import TracebackType
from typing import Any

import numpy as np

from ..bundle import Bundle, load_bundle
from ..errors import InputError, choices
from . import make_runners
from .base import Runner, RunnerOptions
from .generator import sample_generator
from .loops import LANGUAGE_MODELS, TRANSLATION_MODELS, language_model, translation_model
from .recurrent import Stream, sample_vrnn
from .tokens import SamplingConfig, beam_search, decode_tokens, encode_text, generate


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

    def sample(self, n: int, seed: int = 0, labels: np.ndarray | None = None, steps: int | None = None) -> np.ndarray:
        """`n` samples with injected seeded noise: generator images, or VRNN trajectories [n, steps, x_dim]."""
        loop = self._loop("generator", "vrnn")
        if loop["kind"] == "vrnn":
            if labels is not None:
                raise InputError("a VRNN is unconditional; drop --label.")
            return sample_vrnn(self.runner(loop["role"]), loop, n, steps, seed)
        if steps is not None:
            raise InputError("a generator draws each sample in one call; drop --steps.")
        return sample_generator(self.runner(), loop, n, seed, labels)

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
