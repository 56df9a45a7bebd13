"""profile: latency distributions per backend and batch size, with the ratio to the torch baseline."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .backends import RunnerOptions, make_runners
from .bundle import Bundle, load_bundle
from .checks import INT32_MAX, check_fits, check_int
from .errors import InputError, optional_import
from .sources import torch_reference


@dataclass(frozen=True)
class ProfileRow:
    """Latency statistics of one (backend, role, batch)."""

    backend: str
    role: str
    batch: int
    iterations: int
    p10_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    items_per_s: float
    speedup_vs_torch: float | None  # torch p50 / this p50; > 1 means faster than torch eager
    speedup_vs_against: float | None = None  # --against: that bundle's p50 / this p50


@dataclass
class ProfileReport:
    """Rows plus the raw per-iteration latencies (ms) for plotting."""

    bundle: str
    threads: int | None
    rows: list[ProfileRow] = field(default_factory=list)
    latencies: dict[tuple[str, str, int], list[float]] = field(default_factory=dict)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # --against: role -> (--against, own) bytes

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict, raw latencies included."""
        return {
            "bundle": self.bundle,
            "threads": self.threads,
            "rows": [asdict(r) for r in self.rows],
            "sizes_bytes": {role: {"against": a, "bundle": b} for role, (a, b) in self.sizes.items()},
            "latencies_ms": [
                {"backend": k[0], "role": k[1], "batch": k[2], "ms": v} for k, v in self.latencies.items()
            ],
        }

    def table(self) -> str:
        """Plain-text table."""
        head = (
            f"{'backend':<9} {'role':<9} {'batch':>5} {'p10 ms':>9} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} "
            f"{'mean ms':>9} {'items/s':>11} {'vs torch':>9}" + (f" {'vs other':>8}" if self.sizes else "")
        )
        lines = [head, "-" * len(head)]
        for r in self.rows:
            ratio = f"{r.speedup_vs_torch:.2f}x" if r.speedup_vs_torch is not None else "-"
            other = f"{r.speedup_vs_against:.2f}x" if r.speedup_vs_against is not None else "-"
            lines.append(
                f"{r.backend:<9} {r.role:<9} {r.batch:>5} {r.p10_ms:>9.4f} {r.p50_ms:>9.4f} {r.p90_ms:>9.4f} {r.p99_ms:>9.4f} "
                f"{r.mean_ms:>9.4f} {r.items_per_s:>11.1f} {ratio:>9}" + (f" {other:>8}" if self.sizes else "")
            )
        for role, (full, own) in self.sizes.items():
            lines.append(f"size {role}: {own / 1024:.1f} KiB, --against {full / 1024:.1f} KiB ({own / full:.2f}x)")
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Box plots of the latency distributions, one panel per (role, batch), written as PNG."""
        plt = pyplot("--plot needs matplotlib; `pip install matplotlib`.")
        panels = sorted({(k[1], k[2]) for k in self.latencies})
        fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.5), squeeze=False)
        for ax, (role, batch) in zip(axes[0], panels):
            keys = [k for k in self.latencies if (k[1], k[2]) == (role, batch)]
            ax.boxplot([self.latencies[k] for k in keys], showfliers=False)
            ax.set_xticks(range(1, len(keys) + 1), [k[0] for k in keys])
            ax.set_title(f"{role}, batch {batch}")
            ax.set_ylabel("latency (ms)")
        fig.suptitle(f"{Path(self.bundle).name}: {self.threads or 'default'} thread(s)")
        fig.tight_layout()
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(target, dpi=100)
        plt.close(fig)
        return target


def pyplot(need: str) -> Any:
    """matplotlib.pyplot on the file-only Agg backend, or BackendUnavailableError(`need`)."""
    optional_import("matplotlib", need).use("Agg")
    return optional_import("matplotlib.pyplot", need)


BLOCKS = 10  # each variant's iterations run in this many blocks, the variants alternating (order reversed every block)


def _interleaved(runners: Sequence[Any], inputs: dict[str, np.ndarray], iterations: int, warmup: int
                 ) -> list[list[float]]:
    """Per-call latencies (ms) of each runner on the same inputs, timed in alternating blocks so that a machine
    getting slower or faster during the run biases none of them."""
    for runner in runners:
        for _ in range(warmup):
            runner.infer(inputs)
    times: list[list[float]] = [[] for _ in runners]
    per_block = -(-iterations // BLOCKS)
    for block in range(BLOCKS):
        order = range(len(runners)) if block % 2 == 0 else reversed(range(len(runners)))
        for i in order:
            for _ in range(min(per_block, iterations - len(times[i]))):
                start = time.perf_counter()
                runners[i].infer(inputs)
                times[i].append((time.perf_counter() - start) * 1e3)
    return times


def profile(
    bundle: str | os.PathLike[str] | Bundle,
    backends: Sequence[str] = ("ort-cpu", "torch"),
    batches: Sequence[int] = (1, 32),
    iterations: int = 200,
    warmup: int = 20,
    threads: int | None = 1,
    model: Any = None,
    against: str | os.PathLike[str] | Bundle | None = None,
) -> ProfileReport:
    """Time every role of a bundle on each backend and batch size with identical inputs and threads, the backends
    (and `against`, e.g. the fp32 bundle a quantized one came from) interleaved in alternating blocks."""
    check_int("--iterations", iterations, 1, INT32_MAX)
    check_int("--warmup", warmup, 0, INT32_MAX, "untimed calls first")
    for batch in batches:
        check_int("--batch", batch, 1)
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    timings = iterations * len(backends) * len(batches) * len(b.graphs) * 2  # and --against's
    check_fits(timings * 32, f"--iterations {iterations}", "time fewer iterations")  # a Python float in a list
    for graph in b.graphs.values():
        check_fits(graph.spec.nbytes(b.check_shapes[0] | {"batch": max(batches)}), f"--batch {max(batches)}",
                   "profile smaller batches")
    report = ProfileReport(str(b.path), threads)
    options = RunnerOptions(threads=threads)
    source = _comparable(b, against) if against is not None else None
    beside: dict[tuple[str, str, int], list[float]] = {}
    variants: list[tuple[str, dict[str, Any], dict[tuple[str, str, int], list[float]]]] = []
    for backend in backends:
        modules = torch_reference(b, model) if backend == "torch" else None
        variants.append((backend, make_runners(b, backend, options, modules), report.latencies))
        if source is not None and backend != "torch":  # same backend and inputs
            variants.append((backend, make_runners(source, backend, options), beside))
    with ExitStack() as stack:
        for _, runners, _ in variants:
            for runner in runners.values():
                stack.enter_context(runner)
        for role in (r for r, g in b.graphs.items() if g.built_from is None):  # a loop graph is the whole loop
            for batch in batches:
                inputs = b.graphs[role].spec.random_inputs(np.random.default_rng(0), b.check_shapes[0] | {"batch": batch})
                timed = _interleaved([runners[role] for _, runners, _ in variants], inputs, iterations, warmup)
                for (backend, _, into), times in zip(variants, timed):
                    into[(backend, role, batch)] = times
    rank = {name: i for i, name in enumerate(backends)}
    report.latencies = dict(sorted(report.latencies.items(), key=lambda kv: rank[kv[0][0]]))  # backend-major, stable
    if source is not None:
        report.sizes = {role: (g.size_bytes, b.graphs[role].size_bytes) for role, g in source.graphs.items()}
    p50 = {k: float(np.percentile(v, 50)) for k, v in report.latencies.items()}
    for (backend, role, batch), times in report.latencies.items():
        t = np.asarray(times)
        median = p50[(backend, role, batch)]
        base = p50.get(("torch", role, batch))
        full = float(np.percentile(beside[(backend, role, batch)], 50)) if (backend, role, batch) in beside else None
        report.rows.append(
            ProfileRow(
                backend, role, batch, len(t), float(np.percentile(t, 10)), median, float(np.percentile(t, 90)),
                float(np.percentile(t, 99)),
                float(t.mean()), batch * 1e3 / float(t.mean()), base / median if base else None,
                full / median if full else None,
            )
        )
    return report


def _comparable(b: Bundle, against: str | os.PathLike[str] | Bundle) -> Bundle:
    """The bundle to time beside `b`: the same roles, each taking the same inputs; else InputError."""
    other = against if isinstance(against, Bundle) else load_bundle(against)
    for role, graph in b.graphs.items():
        if role not in other.graphs or other.graphs[role].spec.input_names() != graph.spec.input_names():
            raise InputError(f"--against {other.path} has no graph '{role}' taking {graph.spec.input_names()}; "
                             "compare bundles of the same model (e.g. a quantized bundle and its fp32 source).")
    return other
