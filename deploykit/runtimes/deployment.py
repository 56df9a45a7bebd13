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

    def sample(self, n: int, seed: int = 0, labels: np.ndarray | None = None) -> np.ndarray:
        """Draw `n` samples with the bundle's sampling loop (generators: seeded latent noise)."""
        kind = self.bundle.loop.get("kind")
        if kind != "generator":
            raise InputError(
                f"bundle family '{self.bundle.family}' ({kind}) has no sampling loop; "
                "`sample` works for generator bundles (dcgan, cgan)."
            )
        return sample_generator(self.runner(), self.bundle.loop, n, seed, labels)

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
