"""Annealed Langevin dynamics (Song & Ermon 2019) over a noise-conditional score network."""

from __future__ import annotations

import numpy as np

from . import Scheduler, check_steps


class AnnealedLangevin(Scheduler):
    """For each noise level i (largest first), `steps` updates x += alpha_i / 2 * score(x, i) + sqrt(alpha_i) noise,
    alpha_i = step_size * sigma_i^2 / sigma_L^2. The network's t input is the level index i.

    config: sigmas (descending), step_size.
    """

    name = "langevin"

    @property
    def init_noise_sigma(self) -> float:  # type: ignore[override]
        """Start from N(0, sigma_1^2), the largest noise level."""
        return float(self.config["sigmas"][0])

    def set_timesteps(self, steps: int) -> None:
        """`steps` updates per noise level."""
        check_steps(steps, None, "Langevin update per noise level")
        sigmas = np.asarray(self.config["sigmas"], np.float64)
        alphas = float(self.config["step_size"]) * (sigmas / sigmas[-1]) ** 2
        levels = np.repeat(np.arange(len(sigmas)), steps)
        self._set(levels, [(0.0, 0.0, 0.0, 0.0, 1.0, alphas[i] / 2, np.sqrt(alphas[i])) for i in levels])
