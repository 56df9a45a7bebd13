"""Torch reference runner: runs the original nn.Module behind the same contract (torch imported lazily)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..errors import optional_import
from ..specs import GraphSpec
from .base import Runner, RunnerOptions


def import_torch() -> Any:
    """Import torch or raise BackendUnavailableError with the install hint."""
    return optional_import("torch", "this needs torch, which is not installed here; `pip install deploykit[export]` "
                                    "(the ort-* backends and golden-mode verify work without it).")


def float64_mode() -> Any:
    """A torch function mode under which float32 becomes float64: `Tensor.float()` gives float64, and a float32
    dtype given to any torch function (`.to`, factories, casts) is float64 instead. Other dtypes pass through."""
    torch = import_torch()
    from torch.overrides import TorchFunctionMode

    def promote(value: Any) -> Any:
        if value is torch.float32:
            return torch.float64
        if isinstance(value, (list, tuple)):
            return type(value)(promote(v) for v in value)
        return value

    class Float64Mode(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
            if func is torch.Tensor.float:
                func = torch.Tensor.double
            return func(*promote(args), **{k: promote(v) for k, v in (kwargs or {}).items()})

    return Float64Mode()


class Float64References:
    """Float64 TorchRunners (`options.float64`) per role for the parity fp64 rule, each activated on its first use (a
    float64 copy of its weights) and released by `release`. A model that does not run in float64 (a tensor it keeps
    outside its parameters and buffers, an op without a float64 kernel) gives None: parity then falls back to its
    magnitude rule."""

    def __init__(self, runners: Mapping[str, Runner]) -> None:
        self.runners = dict(runners)

    def infer(self, role: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """One role's outputs in float64 (rounded to the graph's dtypes), or None."""
        return self._run(lambda: self.runners[role].infer(feeds), (role,))

    def loop(self, check: Callable[..., dict[str, np.ndarray]], config: Any, seed: int) -> dict[str, np.ndarray] | None:
        """A kind's loop check run over every role in float64, or None."""
        return self._run(lambda: check(self.runners, config, seed), tuple(self.runners))

    def release(self, role: str | None = None) -> None:
        """Drop one role's float64 weights (every role's without `role`)."""
        for name in (role,) if role is not None else tuple(self.runners):
            self.runners[name].deactivate()

    def _run(self, run: Callable[[], dict[str, np.ndarray]], roles: tuple[str, ...]) -> dict[str, np.ndarray] | None:
        try:
            for name in roles:
                self.runners[name].activate()
            return run()
        except Exception:  # noqa: BLE001  (any failure of the float64 copy means: no float64 reference)
            return None


class TorchRunner(Runner):
    """Runs a torch module (eager, CPU) on numpy feeds in graph-input order.

    With `options.float64` it runs the module with float64 copies of its floating parameters and buffers (made at
    activate, released at deactivate; the module itself is untouched) on float64 casts of the float feeds, with every
    float32 the model asks for inside promoted to float64 (`float64_mode`: `.float()`, `dtype=torch.float32`, as
    Hugging Face's RMSNorm and rotary embeddings and PixelCNN's input casts do), and returns outputs in the graph's
    dtypes, so loops run it like any runner."""

    backend = "torch"

    def __init__(self, role: str, spec: GraphSpec, module: Any, options: RunnerOptions | None = None) -> None:
        super().__init__(role, spec, options)
        self.module = module
        self._saved_threads: int | None = None
        self._float64: dict[str, Any] | None = None

    def _activate(self) -> None:
        torch = import_torch()
        self.module.eval()
        if self.options.threads:
            self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(self.options.threads)
        if self.options.float64:
            tensors = (*self.module.named_parameters(), *self.module.named_buffers())
            self._float64 = {n: t.detach().double() if t.is_floating_point() else t for n, t in tensors}

    def _deactivate(self) -> None:
        self._float64 = None
        if self._saved_threads is not None:
            import_torch().set_num_threads(self._saved_threads)
            self._saved_threads = None

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = import_torch()
        args = [torch.from_numpy(feeds[n]) for n in self.spec.input_names()]
        with torch.inference_mode():
            if self._float64 is None:
                result = self.module(*args)
            else:
                args = [a.double() if a.is_floating_point() else a for a in args]
                with float64_mode():
                    result = torch.func.functional_call(self.module, self._float64, tuple(args))
        values = [v.detach().numpy() for v in (result if isinstance(result, (tuple, list)) else (result,))]
        if self._float64 is not None:
            values = [v.astype(s.dtype) for s, v in zip(self.spec.outputs, values)]
        return dict(zip(self.spec.output_names(), values))
