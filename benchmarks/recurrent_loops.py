"""Recurrent loops, ORT-CPU vs torch eager running the same numpy loop, one thread each, one run.

    python benchmarks/recurrent_loops.py [--out bundles/bench] [--tokens 200]

Prints: char-LM tokens/s and per-step latency at batch 1 and 16; streaming latency per chunk;
seq2seq exact-match accuracy (ORT greedy and beam 4) and decode speed; VRNN steps/s.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import deploykit
from deploykit.backends import RunnerOptions
from deploykit.models.data import digit_strings, noisy_tones
from deploykit.runtimes.tokens import mode_config
from deploykit.sources import resolve

ONE_THREAD = RunnerOptions(threads=1)


def _bundle(name: str, out: Path) -> deploykit.Bundle:
    resolved = resolve(f"zoo:{name}")
    return deploykit.export(resolved.model, resolved.family, out / name, force=True, source=resolved.source)


def _best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    """Fastest wall time of `repeats` runs (after one warm-up), seconds."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _row(label: str, ort_s: float, torch_s: float, unit: str, work: float) -> None:
    print(f"{label:<34} {work / ort_s:>12.1f} {work / torch_s:>12.1f}  {unit:<10} {torch_s / ort_s:>6.2f}x")


def char_lm(out: Path, tokens: int) -> None:
    bundle = _bundle("char-lm", out)
    config = mode_config("top-p", tokens)
    with deploykit.load(bundle.path, options=ONE_THREAD) as ort, deploykit.load(bundle.path, "torch", ONE_THREAD) as tch:
        for batch in (1, 16):
            prompts = ["Beautiful is"] * batch
            o = _best_of(lambda: ort.generate(prompts, config, seed=0))
            t = _best_of(lambda: tch.generate(prompts, config, seed=0))
            _row(f"char-lm generate, batch {batch}", o, t, "tokens/s", batch * tokens)
            print(f"{'':<34} per step: ORT {o / tokens * 1e3:.3f} ms, torch {t / tokens * 1e3:.3f} ms")


def streaming(out: Path) -> None:
    bundle = _bundle("lstm-denoiser", out)
    signal = noisy_tones(1, 1600, seed=0)[0][0]
    with deploykit.load(bundle.path, options=ONE_THREAD) as ort, deploykit.load(bundle.path, "torch", ONE_THREAD) as tch:
        for chunk in (1, 16, 160):
            calls = len(signal) // chunk

            def run(dep: deploykit.Deployment) -> None:
                stream = dep.stream(1)
                for i in range(calls):
                    stream.push([signal[i * chunk : (i + 1) * chunk]])

            o, t = _best_of(lambda: run(ort)), _best_of(lambda: run(tch))
            _row(f"stream chunk {chunk}", o, t, "chunks/s", calls)
            print(f"{'':<34} per chunk: ORT {o / calls * 1e3:.3f} ms, torch {t / calls * 1e3:.3f} ms")


def seq2seq(out: Path) -> None:
    bundle = _bundle("seq2seq", out)
    sources = ["".join(map(str, s)) for s in digit_strings(500, seed=1)]
    with deploykit.load(bundle.path, options=ONE_THREAD) as ort, deploykit.load(bundle.path, "torch", ONE_THREAD) as tch:
        greedy, beam = ort.translate(sources), ort.translate(sources[:200], beams=4)
        print(
            f"seq2seq exact match through ORT: greedy {np.mean([g == s[::-1] for g, s in zip(greedy, sources)]):.3f} "
            f"(500 strings, length 1-12), beam 4 {np.mean([b == s[::-1] for b, s in zip(beam, sources)]):.3f} (200)"
        )
        o, t = _best_of(lambda: ort.translate(sources), 1), _best_of(lambda: tch.translate(sources), 1)
        _row("seq2seq greedy, batch 500", o, t, "seqs/s", len(sources))
        o, t = _best_of(lambda: ort.translate(sources[:50], 4), 1), _best_of(lambda: tch.translate(sources[:50], 4), 1)
        _row("seq2seq beam 4, one at a time", o, t, "seqs/s", 50)


def vrnn(out: Path) -> None:
    bundle = _bundle("vrnn", out)
    with deploykit.load(bundle.path, options=ONE_THREAD) as ort, deploykit.load(bundle.path, "torch", ONE_THREAD) as tch:
        for batch in (1, 16):
            o = _best_of(lambda: ort.sample(batch, 0, ort.options(steps=100)))
            t = _best_of(lambda: tch.sample(batch, 0, tch.options(steps=100)))
            _row(f"vrnn sample 100 steps, batch {batch}", o, t, "steps/s", 100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bundles/bench"))
    parser.add_argument("--tokens", type=int, default=200)
    args = parser.parse_args()
    print(f"{'loop':<34} {'ORT':>12} {'torch':>12}  {'unit':<10} {'ORT/torch':>6}")
    char_lm(args.out, args.tokens)
    streaming(args.out)
    seq2seq(args.out)
    vrnn(args.out)


if __name__ == "__main__":
    main()
