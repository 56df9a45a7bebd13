"""GPT generation: KV cache vs full recompute, latency per token vs position, ORT (host loop and in-graph loop) vs
torch; one thread, variants in alternating rounds, median (p10-p90).

    python benchmarks/transformer_generation.py [--out bundles/bench] [--rounds 5] [--quick]
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from timing import ONE_THREAD, arguments, rate, timed, zoo_bundle

import deploykit
from deploykit.runtimes.tokens import SamplingConfig, TokenModel, generate


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


def run(dep: deploykit.Deployment, batch: int, tokens: int) -> Timed:
    """Generate `tokens` greedy tokens (no stop token: exactly that many) for `batch` one-token prompts, one graph call
    per token (the host loop, timing each step)."""
    model = Timed(dep.kind.token_model(dep.runners, dep.loop))
    generate(model, [np.array([0])] * batch, SamplingConfig(temperature=0.0, max_new_tokens=tokens))
    return model


def in_graph(dep: deploykit.Deployment, batch: int, tokens: int) -> None:
    """The same generation by the bundle's default loop (in the graph for the zoo gpt on ORT)."""
    dep.generate_ids([[0]] * batch, SamplingConfig(temperature=0.0, max_new_tokens=tokens))


def main() -> None:
    args, rounds = arguments(__doc__, 5, 2, "")
    cached_bundle, full_bundle = zoo_bundle("gpt", args.out), zoo_bundle("gpt-nocache", args.out)
    with deploykit.load(cached_bundle.path, options=ONE_THREAD) as cached, \
            deploykit.load(full_bundle.path, options=ONE_THREAD) as full, \
            deploykit.load(cached_bundle.path, "torch", ONE_THREAD) as torch_cached:
        print(f"{rounds} interleaved rounds, median (p10-p90)")
        print(f"{'new tokens':>10} {'KV cache tok/s':>22} {'recompute tok/s':>22} {'speedup':>8}   (ORT host loop, batch 1)")
        for n in (64, 256, 512):
            t = timed({"cache": lambda: run(cached, 1, n), "full": lambda: run(full, 1, n)}, rounds)
            print(f"{n:>10} {rate(n, t['cache']):>22} {rate(n, t['full']):>22} "
                  f"{np.median(t['full']) / np.median(t['cache']):>7.1f}x")
        print("\nper-token latency (ms, mean over the window) vs position, ORT batch 1, 512 new tokens")
        windows = [(1, 64), (192, 256), (448, 512)]
        print(f"{'positions':>10} {'KV cache':>10} {'recompute':>10}")
        c, f = run(cached, 1, 512).steps_ms, run(full, 1, 512).steps_ms
        for lo, hi in windows:
            print(f"{f'{lo}-{hi}':>10} {np.mean(c[lo - 1 : hi - 1]):>10.3f} {np.mean(f[lo - 1 : hi - 1]):>10.3f}")
        print(f"\n{'batch':>5} {'ORT in-graph tok/s':>22} {'ORT host tok/s':>22} {'torch tok/s':>22} {'in-graph/torch':>14}"
              "   (KV cache, 256 new tokens)")
        for batch in (1, 8):
            t = timed({"graph": lambda: in_graph(cached, batch, 256), "host": lambda: run(cached, batch, 256),
                       "torch": lambda: run(torch_cached, batch, 256)}, rounds)
            work = batch * 256
            print(f"{batch:>5} {rate(work, t['graph']):>22} {rate(work, t['host']):>22} {rate(work, t['torch']):>22} "
                  f"{np.median(t['torch']) / np.median(t['graph']):>13.2f}x")


if __name__ == "__main__":
    main()
