"""Triton Python-backend models: a graph run by onnxruntime, and a sampling loop whose graph calls are BLS.

Imported by the `model.py` files `deploykit triton` writes, inside Triton's Python stub process,
where `triton_python_backend_utils` exists; nothing here imports it at module level.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..backends.base import Runner, RunnerOptions
from ..backends.ort import OrtRunner
from ..bundle import load_bundle
from ..errors import DeploykitError, InputError
from ..runtimes.deployment import Deployment
from ..specs import GraphSpec
from . import LOOP_INPUTS, from_wire, to_wire


def _pb() -> Any:
    import triton_python_backend_utils as pb_utils

    return pb_utils


def _setup(args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str], Path]:
    """(model config, string parameters, model directory) of a Python-backend model."""
    config = json.loads(args["model_config"])
    params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
    return config, params, Path(args["model_repository"])


def _error(exc: DeploykitError) -> Any:
    """An error response; a bad request (InputError) is INVALID_ARG, which clients see as HTTP 400."""
    pb = _pb()
    invalid = isinstance(exc, InputError) and hasattr(pb.TritonError, "INVALID_ARG")
    error = pb.TritonError(str(exc), pb.TritonError.INVALID_ARG) if invalid else pb.TritonError(str(exc))
    return pb.InferenceResponse(output_tensors=[], error=error)


class GraphModel:
    """One bundle graph on onnxruntime; the requests of a dynamic batch run as one concatenated call."""

    def initialize(self, args: dict[str, Any]) -> None:
        """Load the bundle (checksums verified) and start an ORT session for the configured role."""
        config, params, root = _setup(args)
        bundle = load_bundle(root / params["bundle"])
        graph = bundle.graphs[params["role"]]
        kind = args.get("model_instance_kind", "CPU")
        backend = "ort-cuda" if kind == "GPU" else "ort-cpu"
        options = RunnerOptions(threads=int(params.get("threads", 1)), device_id=int(args.get("model_instance_device_id", 0)))
        self.spec: GraphSpec = graph.spec
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.runner = OrtRunner(graph.role, graph.spec, graph.path, backend, options)
        self.runner.activate()

    def _feeds(self, request: Any) -> dict[str, np.ndarray]:
        pb = _pb()
        return {t.name: from_wire(t, pb.get_input_tensor_by_name(request, t.name).as_numpy(), self.batched)
                for t in self.spec.inputs}

    def _respond(self, outputs: dict[str, np.ndarray]) -> Any:
        pb = _pb()
        return pb.InferenceResponse([pb.Tensor(t.name, to_wire(t, outputs[t.name], self.batched)) for t in self.spec.outputs])

    def execute(self, requests: list[Any]) -> list[Any]:
        """Run the requests; each is validated on its own first (a bad one gets its own 400 and never fails the
        others), then requests whose non-batch shapes agree are concatenated into one call."""
        responses: list[Any] = [None] * len(requests)
        feeds: dict[int, dict[str, np.ndarray]] = {}
        for i, request in enumerate(requests):
            try:
                feeds[i] = self.spec.check_inputs(self._feeds(request), f"request to '{self.runner.role}'")
            except DeploykitError as exc:
                responses[i] = _error(exc)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, f in feeds.items():
            key = tuple((k, v.shape[1:]) for k, v in sorted(f.items())) if self.batched else (i,)
            groups.setdefault(key, []).append(i)
        for members in groups.values():
            sizes = [len(next(iter(feeds[i].values()))) for i in members]
            joined = {k: np.concatenate([feeds[i][k] for i in members]) for k in feeds[members[0]]}
            try:
                outputs = self.runner.infer(joined, checked=True)  # each part was checked above
            except DeploykitError as exc:
                for i in members:
                    responses[i] = _error(exc)
                continue
            bounds = np.cumsum([0, *sizes])
            for i, lo, hi in zip(members, bounds[:-1], bounds[1:]):
                responses[i] = self._respond({k: v[lo:hi] for k, v in outputs.items()})
        return responses

    def finalize(self) -> None:
        """Close the session."""
        self.runner.deactivate()


class BLSRunner(Runner):
    """Runs a graph by a BLS request to the Triton model serving it (the shared runner contract)."""

    backend = "triton-bls"

    def __init__(self, role: str, spec: GraphSpec, model: str, batched: bool) -> None:
        super().__init__(role, spec)
        self.model = model
        self.batched = batched

    def _activate(self) -> None:
        self.pb = _pb()

    def _deactivate(self) -> None:
        pass

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pb = self.pb
        inputs = [pb.Tensor(t.name, np.ascontiguousarray(to_wire(t, feeds[t.name], self.batched))) for t in self.spec.inputs]
        response = pb.InferenceRequest(
            model_name=self.model, requested_output_names=self.spec.output_names(), inputs=inputs
        ).exec()
        if response.has_error():
            raise DeploykitError(f"graph model '{self.model}' failed: {response.error().message()}")
        return {t.name: from_wire(t, pb.get_output_tensor_by_name(response, t.name).as_numpy(), self.batched)
                for t in self.spec.outputs}


class LoopModel:
    """A bundle's sampling loop; each request (LOOP_INPUTS: n, seed, labels, steps, scheduler, ...) -> samples."""

    def initialize(self, args: dict[str, Any]) -> None:
        """Load the bundle and wire one BLS runner per graph role."""
        _, params, root = _setup(args)
        bundle = load_bundle(root / params["bundle"])
        graphs = json.loads(params["graphs"])
        runners: dict[str, Runner] = {
            role: BLSRunner(role, g.spec, graphs[role]["model"], graphs[role]["batched"]) for role, g in bundle.graphs.items()
        }
        self.deployment = Deployment(bundle, runners).__enter__()
        self.max_samples = int(params.get("max_samples", 4096))

    def execute(self, requests: list[Any]) -> list[Any]:
        """One sampling loop per request, in turn (run more instances for concurrency)."""
        pb = _pb()
        responses = []
        for request in requests:
            value = {k: (t.as_numpy() if (t := pb.get_input_tensor_by_name(request, k)) is not None else None)
                     for k in LOOP_INPUTS}
            try:
                samples = loop_samples(self.deployment, value, self.max_samples)
                responses.append(pb.InferenceResponse([pb.Tensor("samples", np.ascontiguousarray(samples))]))
            except DeploykitError as exc:
                responses.append(_error(exc))
        return responses

    def finalize(self) -> None:
        """Release the runners."""
        self.deployment.__exit__(None, None, None)


def loop_samples(deployment: Deployment, value: dict[str, np.ndarray | None], max_samples: int) -> np.ndarray:
    """The samples a loop request asks for, with the options its kind fixes when served (LoopKind.serving);
    InputError for more than `max_samples` samples."""
    n, seed, given = sample_arguments(value)
    if n > max_samples:
        raise InputError(f"request input 'n' is {n}; this server samples at most {max_samples} per request "
                         "(send several requests, or raise max_samples when writing the repository).")
    kind = deployment.kind
    options = kind.make_options(given | dict(kind.serving), {k: f"request input '{k}'" for k in given})
    return deployment.sample(n, seed, options)


def sample_arguments(value: dict[str, np.ndarray | None]) -> tuple[int, int, dict[str, Any]]:
    """(n, seed, the sampling options the request sets) from a loop request's tensors (absent ones: None)."""
    def scalar(name: str) -> Any:
        array = value[name]
        if array is None:
            return None
        if array.size != 1:
            raise InputError(f"request input '{name}' has {array.size} values, expected 1.")
        return array.reshape(()).item()

    if value["n"] is None:
        raise InputError("request input 'n' (number of samples) is required.")
    scheduler = scalar("scheduler")
    given = {
        "labels": None if value["labels"] is None else value["labels"].astype(np.int64).reshape(-1),
        "steps": None if value["steps"] is None else int(scalar("steps")),
        "scheduler": scheduler.decode() if isinstance(scheduler, bytes) else scheduler,
        "eta": scalar("eta"),
        "karras": None if value.get("karras") is None else bool(scalar("karras")),
        "clipped_model_output": None if value.get("clipped_model_output") is None else bool(scalar("clipped_model_output")),
        "guidance": scalar("guidance"),
    }
    return int(scalar("n")), int(scalar("seed") or 0), {k: v for k, v in given.items() if v is not None}
