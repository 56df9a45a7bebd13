"""Energy-model families: RBMs (k-step Gibbs sampling as one scan graph) and Hopfield networks (one update).

The Gibbs graph takes its noise as inputs (uniforms for Bernoulli units, standard normals for
Gaussian visibles), one slice per step, so chains are reproducible across backends and the host
can run it one step per call or all k steps in one.
"""

from __future__ import annotations

import torch
from torch import nn
from torch._higher_order_ops.scan import scan

from ..errors import ExportError
from ..runtimes.energy import GibbsConfig, HopfieldConfig
from ..specs import TensorSpec
from .feedforward import BATCHES
from .registry import Family, Role, Tolerance, attribute, register

RBM_PROTOCOL = (
    "`visible`, `hidden`, `visible_type` ('bernoulli' or 'gaussian'), `image_shape` and gibbs_step(v, hidden_uniform, "
    "visible_noise) -> (v', h, E[v' | h]), drawing h = (uniform < p(h | v)) and v' from the injected noise; forward "
    "(v, hidden_uniforms [k, ...], visible_noise [k, ...]) runs k steps."
)
HOPFIELD_PROTOCOL = "`units`, `image_shape`; forward(state [batch, units] of +-1) -> (next state, energy [batch])."


class GibbsScan(nn.Module):
    """k Gibbs steps as a torch scan over the injected noise (ONNX Scan): (v, h, mean) after the last step."""

    def __init__(self, rbm: nn.Module) -> None:
        super().__init__()
        self.rbm = rbm

    def forward(self, v: torch.Tensor, hidden_uniforms: torch.Tensor, visible_noise: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        def body(state: tuple[torch.Tensor, ...], noise: tuple[torch.Tensor, torch.Tensor]
                 ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
            v, h, mean = self.rbm.gibbs_step(state[0], *noise)
            return (v, h, mean), mean[:1, :1].clone()

        start = (v.clone(), v.new_zeros(v.shape[0], hidden_uniforms.shape[-1]), v.clone())
        return scan(body, start, (hidden_uniforms, visible_noise))[0]


def _rbm_roles(model: nn.Module) -> dict[str, Role]:
    visible = int(attribute(model, "visible", "rbm", RBM_PROTOCOL))
    hidden = int(attribute(model, "hidden", "rbm", RBM_PROTOCOL))
    kind = attribute(model, "visible_type", "rbm", RBM_PROTOCOL)
    if kind not in ("bernoulli", "gaussian"):
        raise ExportError(f"{type(model).__name__}.visible_type is {kind!r}; expected 'bernoulli' or 'gaussian'.")
    bounds = {"low": 0, "high": 1} if kind == "bernoulli" else {}
    inputs = (TensorSpec("v", "float32", ("batch", visible)),
              TensorSpec("hidden_uniforms", "float32", ("steps", "batch", hidden), low=0, high=1),
              TensorSpec("visible_noise", "float32", ("steps", "batch", visible), **bounds))
    return {"gibbs": Role(GibbsScan(model), inputs, ("v_last", "h_last", "visible_mean"), {"batch": 2, "steps": 3}, reference=model)}


def _rbm_loop(model: nn.Module) -> GibbsConfig:
    return GibbsConfig(visible=int(model.visible), hidden=int(model.hidden), visible_type=str(model.visible_type),
                       image_shape=[int(d) for d in model.image_shape], value_range=[0.0, 1.0])


def _hopfield_roles(model: nn.Module) -> dict[str, Role]:
    units = int(attribute(model, "units", "hopfield", HOPFIELD_PROTOCOL))
    return {"update": Role(model, (TensorSpec("state", "float32", ("batch", units)),), ("next", "energy"), {"batch": 2})}


def _hopfield_loop(model: nn.Module) -> HopfieldConfig:
    return HopfieldConfig(units=int(model.units), max_iterations=4 * int(model.units),
                          image_shape=[int(d) for d in attribute(model, "image_shape", "hopfield", HOPFIELD_PROTOCOL)],
                          value_range=[-1.0, 1.0])


# Binary units are compared exactly by the loop checks (the same uniforms and the same probabilities up
# to ~1e-7 give the same states); the tolerance covers the Gaussian means and the energies.
register(Family("rbm", "RBM (Bernoulli-Bernoulli or Gaussian-Bernoulli): k-step Gibbs sampling graph, noise injected",
                RBM_PROTOCOL, _rbm_roles, lambda m: [{"batch": 1, "steps": 1}, {"batch": 7, "steps": 4}],
                Tolerance(1e-5, 1e-4), ("gibbs",), _rbm_loop))
register(Family("hopfield", "Hopfield network: one synchronous update per call, retrieval to a fixed point on the host",
                HOPFIELD_PROTOCOL, _hopfield_roles, lambda m: BATCHES, Tolerance(1e-5, 1e-5), ("hopfield",), _hopfield_loop))
