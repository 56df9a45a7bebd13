"""A bounded load test against a Triton server: N concurrent clients, each response checked against local ORT.

Requests are built and their expected outputs computed locally first (the same graphs on
onnxruntime, the same loop with the same seed), then `clients` threads, each with its own
tritonclient HTTP connection, send them all; latency is timed per request. Needs tritonclient[http].
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..backends import make_runners
from ..bundle import Bundle
from ..errors import InputError, optional_import
from ..parity import Tolerance
from ..runtimes.deployment import Deployment
from . import batchable, to_wire
from .models import loop_samples


@dataclass(frozen=True)
class Request:
    """Wire-shaped inputs and the outputs the local run gave for them."""

    inputs: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]


@dataclass
class LoadReport:
    """What one load test measured."""

    model: str
    clients: int
    requests: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    mismatches: int
    max_abs_error: float
    first_error: str = ""
    requests_per_execution: dict[str, float] = field(default_factory=dict)  # graph model -> requests merged per run

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def _tritonclient() -> Any:
    return optional_import("tritonclient.http", "the load test needs tritonclient: `pip install tritonclient[http]` "
                                                "(`make triton-env` has it).")


def graph_requests(bundle: Bundle, role: str, count: int, seed: int = 0) -> list[Request]:
    """`count` random requests for one graph model (batches of 1-8 where it batches), with local outputs."""
    spec = bundle.graphs[role].spec
    batched = batchable(spec)
    rng = np.random.default_rng(seed)
    requests = []
    with make_runners(bundle)[role] as runner:
        for _ in range(count):
            dims = bundle.check_shapes[0] | ({"batch": int(rng.choice([1, 2, 4, 8]))} if batched else {})
            feeds = spec.random_inputs(rng, dims)
            outputs = runner.infer(feeds)
            requests.append(Request({t.name: to_wire(t, feeds[t.name], batched) for t in spec.inputs},
                                    {t.name: to_wire(t, outputs[t.name], batched) for t in spec.outputs}))
    return requests


def loop_requests(bundle: Bundle, count: int, steps: int | None = None, **diffusion: Any) -> list[Request]:
    """`count` loop requests (n = 1..4, seed = i, labels where conditional) with the local loop's samples."""
    classes = getattr(bundle.loop, "num_classes", 0)
    requests = []
    with Deployment(bundle, make_runners(bundle)) as local:
        for i in range(count):
            n = 1 + i % 4
            value: dict[str, np.ndarray | None] = {
                "n": np.array([n], np.int32), "seed": np.array([i], np.int64),
                "labels": (np.arange(n, dtype=np.int64) + i) % classes if classes else None,
                "steps": None if steps is None else np.array([steps], np.int32),
                "scheduler": np.array([diffusion["scheduler"].encode()], object) if "scheduler" in diffusion else None,
                "eta": np.array([diffusion["eta"]], np.float32) if "eta" in diffusion else None,
                "guidance": np.array([diffusion["guidance"]], np.float32) if "guidance" in diffusion else None,
            }
            samples = loop_samples(local, value, n)
            requests.append(Request({k: v for k, v in value.items() if v is not None}, {"samples": samples}))
    return requests


def _inputs(http: Any, arrays: dict[str, np.ndarray]) -> list[Any]:
    from tritonclient.utils import np_to_triton_dtype

    inputs = []
    for name, array in arrays.items():
        tensor = http.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array, binary_data=True)
        inputs.append(tensor)
    return inputs


def server_counts(url: str, models: list[str]) -> dict[str, tuple[int, int]]:
    """(successful requests, executions) so far, per model, from Triton's statistics."""
    http = _tritonclient()
    out = {}
    with http.InferenceServerClient(url) as client:
        for model in models:
            stats = client.get_inference_statistics(model)["model_stats"][0]
            out[model] = (int(stats["inference_stats"]["success"]["count"]), int(stats["execution_count"]))
    return out


def run_load(url: str, model: str, requests: list[Request], clients: int, tolerance: Tolerance) -> LoadReport:
    """Send every request once from `clients` concurrent clients; count errors and outputs outside `tolerance`."""
    if clients < 1 or not requests:
        raise InputError(f"--clients is {clients} with {len(requests)} requests; expected at least 1 of each.")
    http = _tritonclient()
    order = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []
    worst = [0.0, 0]  # max abs error, mismatches

    def client_loop() -> None:
        with http.InferenceServerClient(url, connection_timeout=300, network_timeout=300) as client:
            while (i := next(order)) < len(requests):
                request = requests[i]
                outputs = [http.InferRequestedOutput(k, binary_data=True) for k in request.expected]
                start = time.perf_counter()
                try:
                    result = client.infer(model, _inputs(http, request.inputs), outputs=outputs)
                except Exception as exc:  # tritonclient raises InferenceServerException and socket errors
                    with lock:
                        failures.append(f"request {i}: {exc}")
                    continue
                elapsed = (time.perf_counter() - start) * 1e3
                got = {k: result.as_numpy(k) for k in request.expected}
                same = all(got[k].shape == v.shape and np.allclose(got[k], v, atol=tolerance.of(k)[0], rtol=tolerance.of(k)[1])
                           for k, v in request.expected.items())
                errs = [float(np.max(np.abs(got[k].astype(np.float64) - v), initial=0.0)) if got[k].shape == v.shape
                        else float("inf") for k, v in request.expected.items()]
                with lock:
                    latencies.append(elapsed)
                    worst[0] = max(worst[0], *errs)
                    worst[1] += 0 if same else 1

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    lat = np.asarray(latencies or [np.nan])
    return LoadReport(
        model, clients, len(requests), seconds, len(latencies) / seconds, float(np.percentile(lat, 50)),
        float(np.percentile(lat, 99)), len(failures), int(worst[1]), float(worst[0]), failures[0] if failures else "",
    )
