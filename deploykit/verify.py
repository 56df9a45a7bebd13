"""verify: replay golden vectors (torch-free) and, where torch and the source are here, compare on fresh inputs."""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .backends import RunnerOptions, make_runners
from .backends.torch import Float64References
from .bundle import LOOP_ROLE, Bundle, load_bundle
from .checks import check_seed
from .errors import BackendUnavailableError, BundleError, InputError
from .parity import ParityReport
from .precision import accuracy_table
from .runtimes.kinds import compare_loop, kind_of
from .sources import torch_reference
from .specs import dims_label


@dataclass
class VerifyResult:
    """Parity rows plus notes (seed used, modes skipped and why)."""

    bundle: str
    backend: str
    report: ParityReport
    notes: list[str] = field(default_factory=list)
    allow_uninformative: bool = False

    @property
    def passed(self) -> bool:
        """True when every compared output is within tolerance and every case is informative (unless allowed)."""
        return self.report.passed and (self.allow_uninformative or not self.report.uninformative())

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"bundle": self.bundle, "backend": self.backend, "notes": self.notes} | self.report.to_json()


def verify(
    bundle: str | os.PathLike[str] | Bundle,
    backend: str = "ort-cpu",
    model: Any = None,
    fresh: bool | None = None,
    seed: int | None = None,
    options: RunnerOptions | None = None,
    allow_uninformative: bool = False,
) -> VerifyResult:
    """Check a bundle's graphs on `backend` against the torch original.

    Golden mode always runs. Fresh mode (new random inputs at every check shape, torch vs
    backend) runs when `fresh` is True, or when it is None and torch plus the source are available.
    A case whose every reference output is constant or within atol of 0 proves nothing: the result
    fails unless `allow_uninformative`.
    """
    if seed is not None:
        check_seed(seed)
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    if backend == "torch":
        raise InputError("verify compares a deployment backend against torch; choose an ort-* backend.")
    tol = b.tolerance
    loop = b.loop
    check = kind_of(loop).check
    result = VerifyResult(str(b.path), backend, ParityReport(), allow_uninformative=allow_uninformative)
    if b.tokenizer is not None:  # the text path is part of the proof
        try:
            _ = b.text_tokenizer  # BundleError when garbage or swapped
        except BackendUnavailableError as exc:
            result.notes.append(f"tokenizer: not checked ({exc})")
    runners = make_runners(b, backend, options)
    for runner in runners.values():
        runner.activate()
    try:
        for case in b.golden:
            inputs, expected = case.load()
            if case.role == LOOP_ROLE:
                if check is None:
                    raise BundleError(f"bundle {b.path}: a loop run is recorded, but '{loop.kind}' loops have no check; "
                                      "re-export the bundle.")
                seed_run = int(inputs["seed"])
                compare_loop(result.report, f"golden {case.role} {case.name}", runners, loop, seed_run, expected,
                             check(runners, loop, seed_run), tol, recorded=case.allowed)
            else:
                result.report.add(f"golden {case.role} {case.name}", expected, runners[case.role].infer(inputs), tol,
                                  b.graphs[case.role].spec, recorded=case.allowed)
        if "precision" in b.manifest:
            result.notes.append(f"{b.manifest['precision']['mode']} accuracy change, measured at quantize time:\n"
                                + accuracy_table(b.manifest["precision"]["accuracy"]))
        if fresh is False:
            result.notes.append("fresh inputs: skipped (--golden-only)")
            return result
        try:
            modules = torch_reference(b, model)
            references = make_runners(b, "torch", options, modules)
            references64 = make_runners(b, "torch", replace(options or RunnerOptions(), float64=True), modules)
        except (BackendUnavailableError, InputError) as exc:
            if fresh:
                raise
            result.notes.append(f"fresh inputs: skipped ({exc})")
            return result
        seed = int(np.random.SeedSequence().entropy % 2**31) if seed is None else seed
        result.notes.append(f"fresh inputs: seed {seed}")
        rng = np.random.default_rng(seed)
        with ExitStack() as stack:
            for ref in references.values():
                stack.enter_context(ref)
            fp64 = Float64References(references64)  # activated only where a case needs them
            stack.callback(fp64.release)
            for role, ref in references.items():
                for dims in b.check_shapes:
                    case = dims_label(dims)
                    inputs = runners[role].spec.random_inputs(rng, dims)
                    result.report.add(f"fresh {role} {case}", ref.infer(inputs), runners[role].infer(inputs), tol,
                                      runners[role].spec, lambda: fp64.infer(role, inputs))  # noqa: B023
                fp64.release(role)
            if "precision" in b.manifest:
                result.notes.append(
                    f"loop replay: skipped for a {b.manifest['precision']['mode']} bundle (its tokens may diverge "
                    "from torch); see the top-1 agreement of the logits above"
                )
            elif check is not None:
                compare_loop(result.report, f"fresh loop seed={seed}", runners, loop, seed, check(references, loop, seed),
                             check(runners, loop, seed), tol, lambda: fp64.loop(check, loop, seed))
    finally:
        for runner in runners.values():
            runner.deactivate()
    return result
