"""Masked autoregressive sampling: WaveNet fast vs naive, PixelCNN / MADE / NADE per image, ORT vs torch loops.

    python benchmarks/autoregressive_sampling.py [--out bundles/bench]

One thread per backend, one run. Also prints each zoo model's test NLL computed through ORT.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from recurrent_loops import ONE_THREAD, _best_of, _bundle, _row

import deploykit
from deploykit.models import autoregressive as ar
from deploykit.models.data import binarized_digits, level_digits, load_digits, tone_clips
from deploykit.runtimes.autoregressive import sample_dimensionwise


def wavenet(out: Path) -> None:
    """Fast vs naive per sample once the receptive field is full (naive re-runs the whole field per sample)."""
    bundle = _bundle("wavenet", out)
    field = bundle.loop.receptive_field
    steady, label = 300, np.array(1)
    with deploykit.load(bundle.path, options=ONE_THREAD) as ort, deploykit.load(bundle.path, "torch", ONE_THREAD) as tch:
        def naive_steady() -> float:
            head = _best_of(lambda: ort.sample(1, 0, ort.options(labels=label, steps=field, fast=False)), 1)
            return (_best_of(lambda: ort.sample(1, 0, ort.options(labels=label, steps=field + steady, fast=False)), 1) - head) / steady

        fast = _best_of(lambda: ort.sample(1, 0, ort.options(labels=label, steps=2000)), 2) / 2000
        naive = naive_steady()
        print(f"WaveNet, receptive field {field}, batch 1 (ORT): fast {1 / fast:.0f} samples/s, naive {1 / naive:.0f} "
              f"samples/s -> fast is {naive / fast:.1f}x")
        t_fast = _best_of(lambda: tch.sample(1, 0, tch.options(labels=label, steps=2000)), 2) / 2000
        _row("WaveNet fast generation, batch 1", fast, t_fast, "samples/s", 1)
        o16 = _best_of(lambda: ort.sample(16, 0, ort.options(steps=500)), 2)
        t16 = _best_of(lambda: tch.sample(16, 0, tch.options(steps=500)), 2)
        _row("WaveNet fast generation, batch 16", o16, t16, "samples/s", 16 * 500)


def images(out: Path) -> None:
    for name in ("pixelcnn", "made", "nade", "fvsbn"):
        bundle = _bundle(name, out)
        with deploykit.load(bundle.path, options=ONE_THREAD) as ort, deploykit.load(bundle.path, "torch", ONE_THREAD) as tch:
            for batch in (1, 16):
                o = _best_of(lambda: ort.sample(batch, 0))
                t = _best_of(lambda: tch.sample(batch, 0))
                _row(f"{name} sampling, batch {batch}", o, t, "images/s", batch)
                print(f"{'':<34} per image: ORT {o / batch * 1e3:.2f} ms, torch {t / batch * 1e3:.2f} ms")
            if name == "nade":
                full = _best_of(lambda: sample_dimensionwise(ort.runners, bundle.loop, 16, 0))
                print(f"{'':<34} NADE recursion vs 64 full passes, batch 16 (ORT): {full / o:.1f}x faster")


def likelihoods(out: Path) -> None:
    digits = load_digits()
    binary = binarized_digits(digits)[1]
    audio, kind = tone_clips(64, 512, seed=1)
    data = {
        "fvsbn": (binary, None), "nade": (binary, None), "made": (binary, None),
        "pixelcnn": (level_digits(digits.x_test, 4), digits.y_test),
        "wavenet": (ar.mu_law_encode(audio, 256), kind),
    }
    for name, (x, labels) in data.items():
        bundle = _bundle(name, out)
        with deploykit.load(bundle.path) as ort, deploykit.load(bundle.path, "torch") as tch:
            got, want = ort.log_prob(x, labels), tch.log_prob(x, labels)
        dims = x[0].size
        print(f"{name:<9} test NLL through ORT {-got.mean():8.3f} nats/example ({-got.mean() / dims / np.log(2):.3f} bits/dim); "
              f"max |ORT - torch| per example {np.abs(got - want).max():.2e} nats")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bundles/bench"))
    args = parser.parse_args()
    print(f"{'loop':<34} {'ORT':>12} {'torch':>12}  {'unit':<10} {'ratio':>7}")
    wavenet(args.out)
    images(args.out)
    likelihoods(args.out)


if __name__ == "__main__":
    main()
