"""GPT generation: KV cache vs full recompute, latency per token vs position, ORT vs torch; one thread, one run.

    python benchmarks/transformer_generation.py [--out bundles/bench]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import deploykit
from deploykit.backends import RunnerOptions
from deploykit.runtimes.tokens import SamplingConfig, TokenModel, generate
from deploykit.sources import resolve

ONE_THREAD = RunnerOptions(threads=1)


class Timed:
    """A TokenModel wrapper that records the wall time of every step() call."""

    def __init__(self, inner: TokenModel) -> None:
        self.inner, self.vocab_size, self.steps_ms = inner, inner.vocab_size, []

    def start(self, prompts: Sequence[np.ndarray]) -> np.ndarray:
        return self.inner.start(prompts)

    def step(self, tokens: np.ndarray) -> np.ndarray:
        begin = time.perf_counter()
        out = self.inner.step(tokens)
        self.steps_ms.append((time.perf_counter() - begin) * 1e3)
        return out

    def select(self, rows: np.ndarray) -> None:
        self.inner.select(rows)


def _bundle(name: str, out: Path) -> deploykit.Bundle:
    resolved = resolve(f"zoo:{name}")
    return deploykit.export(resolved.model, resolved.family, out / name, force=True, source=resolved.source)


def run(dep: deploykit.Deployment, batch: int, tokens: int) -> Timed:
    """Generate `tokens` greedy tokens (no stop token: exactly that many) for `batch` one-token prompts."""
    model = Timed(dep.kind.token_model(dep.runners, dep.loop))
    generate(model, [np.array([0])] * batch, SamplingConfig(temperature=0.0, max_new_tokens=tokens))
    return model


def tokens_per_s(dep: deploykit.Deployment, batch: int, tokens: int) -> float:
    """Best of 2 timed runs after a warm-up."""
    run(dep, batch, 8)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        run(dep, batch, tokens)
        times.append(time.perf_counter() - start)
    return batch * tokens / min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bundles/bench"))
    args = parser.parse_args()
    cached_bundle, full_bundle = _bundle("gpt", args.out), _bundle("gpt-nocache", args.out)
    with deploykit.load(cached_bundle.path, options=ONE_THREAD) as cached, \
            deploykit.load(full_bundle.path, options=ONE_THREAD) as full, \
            deploykit.load(cached_bundle.path, "torch", ONE_THREAD) as torch_cached:
        print(f"{'new tokens':>10} {'KV cache tok/s':>15} {'recompute tok/s':>16} {'speedup':>8}   (ORT, batch 1)")
        for n in (64, 256, 512):
            a, b = tokens_per_s(cached, 1, n), tokens_per_s(full, 1, n)
            print(f"{n:>10} {a:>15.0f} {b:>16.0f} {a / b:>7.1f}x")
        print("\nper-token latency (ms, mean over the window) vs position, ORT batch 1, 512 new tokens")
        windows = [(1, 64), (192, 256), (448, 512)]
        print(f"{'positions':>10} {'KV cache':>10} {'recompute':>10}")
        c, f = run(cached, 1, 512).steps_ms, run(full, 1, 512).steps_ms
        for lo, hi in windows:
            print(f"{f'{lo}-{hi}':>10} {np.mean(c[lo - 1 : hi - 1]):>10.3f} {np.mean(f[lo - 1 : hi - 1]):>10.3f}")
        print(f"\n{'batch':>5} {'ORT tok/s':>10} {'torch tok/s':>12} {'speedup':>8}   (KV cache, 256 new tokens)")
        for batch in (1, 8):
            a, b = tokens_per_s(cached, batch, 256), tokens_per_s(torch_cached, batch, 256)
            print(f"{batch:>5} {a:>10.0f} {b:>12.0f} {a / b:>7.2f}x")


if __name__ == "__main__":
    main()
