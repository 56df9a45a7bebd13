"""Recurrent loops, ORT-CPU vs torch eager running the same numpy loop, one thread each.

    python benchmarks/recurrent_loops.py [--out bundles/bench] [--tokens 200] [--rounds 7] [--quick]

Prints: char-LM tokens/s and per-step latency at batch 1 and 16; streaming latency per chunk;
seq2seq exact-match accuracy (ORT greedy and beam 4) and decode speed; VRNN steps/s. ORT and torch run in
alternating rounds; rates are median (p10-p90) over the rounds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from timing import ONE_THREAD, VERSUS_HEAD, arguments, timed, versus_row, zoo_bundle

import deploykit
from deploykit.models.data import digit_strings, noisy_tones
from deploykit.runtimes.tokens import mode_config


def char_lm(out: Path, tokens: int, rounds: int) -> None:
    bundle = zoo_bundle("char-lm", out)
    config = mode_config("top-p", tokens)
    with deploykit.load(bundle.path, options=ONE_THREAD) as ort, deploykit.load(bundle.path, "torch", ONE_THREAD) as tch:
        for batch in (1, 16):
            prompts = ["Beautiful is"] * batch
            t = timed({"ort": lambda: ort.generate(prompts, config, seed=0),
                       "torch": lambda: tch.generate(prompts, config, seed=0)}, rounds)
            versus_row(f"char-lm generate, batch {batch}", t["ort"], t["torch"], "tokens/s", batch * tokens)
            print(f"{'':<36} per step: ORT {np.median(t['ort']) / tokens * 1e3:.3f} ms, "
                  f"torch {np.median(t['torch']) / tokens * 1e3:.3f} ms")


def streaming(out: Path, rounds: int) -> None:
    bundle = zoo_bundle("lstm-denoiser", out)
    signal = noisy_tones(1, 1600, seed=0)[0][0]
    with deploykit.load(bundle.path, options=ONE_THREAD) as ort, deploykit.load(bundle.path, "torch", ONE_THREAD) as tch:
        for chunk in (1, 16, 160):
            calls = len(signal) // chunk

            def run(dep: deploykit.Deployment) -> None:
                stream = dep.stream(1)
                for i in range(calls):
                    stream.push([signal[i * chunk : (i + 1) * chunk]])

            t = timed({"ort": lambda: run(ort), "torch": lambda: run(tch)}, rounds)
            versus_row(f"stream chunk {chunk}", t["ort"], t["torch"], "chunks/s", calls)
            print(f"{'':<36} per chunk: ORT {np.median(t['ort']) / calls * 1e3:.3f} ms, "
                  f"torch {np.median(t['torch']) / calls * 1e3:.3f} ms")


def seq2seq(out: Path, rounds: int) -> None:
    bundle = zoo_bundle("seq2seq", out)
    sources = ["".join(map(str, s)) for s in digit_strings(500, seed=1)]
    with deploykit.load(bundle.path, options=ONE_THREAD) as ort, deploykit.load(bundle.path, "torch", ONE_THREAD) as tch:
        greedy, beam = ort.translate(sources), ort.translate(sources[:200], beams=4)
        print(
            f"seq2seq exact match through ORT: greedy {np.mean([g == s[::-1] for g, s in zip(greedy, sources)]):.3f} "
            f"(500 strings, length 1-12), beam 4 {np.mean([b == s[::-1] for b, s in zip(beam, sources)]):.3f} (200)"
        )
        t = timed({"ort": lambda: ort.translate(sources), "torch": lambda: tch.translate(sources)}, rounds)
        versus_row("seq2seq greedy, batch 500", t["ort"], t["torch"], "seqs/s", len(sources))
        t = timed({"ort": lambda: ort.translate(sources[:50], 4), "torch": lambda: tch.translate(sources[:50], 4)}, rounds)
        versus_row("seq2seq beam 4, one at a time", t["ort"], t["torch"], "seqs/s", 50)


def vrnn(out: Path, rounds: int) -> None:
    bundle = zoo_bundle("vrnn", out)
    with deploykit.load(bundle.path, options=ONE_THREAD) as ort, deploykit.load(bundle.path, "torch", ONE_THREAD) as tch:
        for batch in (1, 16):
            t = timed({"ort": lambda: ort.sample(batch, 0, ort.options(steps=100)),
                       "torch": lambda: tch.sample(batch, 0, tch.options(steps=100))}, rounds)
            versus_row(f"vrnn sample 100 steps, batch {batch}", t["ort"], t["torch"], "steps/s", 100)


def main() -> None:
    def tokens(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--tokens", type=int, default=200)

    args, rounds = arguments(__doc__, 7, 2, "", tokens)
    print(f"{rounds} interleaved rounds, rates median (p10-p90)\n{VERSUS_HEAD}")
    char_lm(args.out, args.tokens, rounds)
    streaming(args.out, rounds)
    seq2seq(args.out, rounds)
    vrnn(args.out, rounds)


if __name__ == "__main__":
    main()
