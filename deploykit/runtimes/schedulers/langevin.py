"""Annealed Langevin dynamics (Song & Ermon 2019) over a noise-conditional score network."""

from __future__ import annotations

import numpy as np

from . import Scheduler, check_steps, register_scheduler, row


@register_scheduler
class AnnealedLangevin(Scheduler):
    """For each noise level i (largest first), `steps` updates x += alpha_i / 2 * score(x, i) + sqrt(alpha_i) noise,
    alpha_i = step_size * sigma_i^2 / sigma_L^2, starting from N(0, sigma_1^2). The network's t input is the level i.

    config: sigmas (descending), step_size.
    """

    name = "langevin"
    default_steps = 100
    short_steps = 3  # per noise level

    def set_timesteps(self, steps: int) -> None:
        """`steps` updates per noise level."""
        check_steps(steps, None, "Langevin update per noise level")
        sigmas = np.asarray(self.config["sigmas"], np.float64)
        alphas = float(self.config["step_size"]) * (sigmas / sigmas[-1]) ** 2
        levels = np.repeat(np.arange(len(sigmas)), steps)
        self._set(levels, [row(q=1.0, r=alphas[i] / 2, s=np.sqrt(alphas[i])) for i in levels], float(sigmas[0]))
