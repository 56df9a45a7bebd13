"""Masked autoregressive sampling: WaveNet fast vs naive, PixelCNN / MADE / NADE per image, ORT vs torch loops.

    python benchmarks/autoregressive_sampling.py [--out bundles/bench] [--rounds 5] [--quick]

One thread per backend; variants run in alternating rounds, rates median (p10-p90). Also prints each zoo
model's test NLL computed through ORT.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from timing import ONE_THREAD, VERSUS_HEAD, arguments, timed, versus_row, zoo_bundle

import deploykit
from deploykit.models import autoregressive as ar
from deploykit.models.data import binarized_digits, level_digits, load_digits, tone_clips
from deploykit.runtimes.autoregressive import sample_dimensionwise


def wavenet(out: Path, rounds: int) -> None:
    """Fast vs naive per sample once the receptive field is full (naive re-runs the whole field per sample)."""
    bundle = zoo_bundle("wavenet", out)
    field = bundle.loop.receptive_field
    steady, label = 300, np.array(1)
    with deploykit.load(bundle.path, options=ONE_THREAD) as ort, deploykit.load(bundle.path, "torch", ONE_THREAD) as tch:
        t = timed({
            "fast": lambda: ort.sample(1, 0, ort.options(labels=label, steps=2000)),
            "torch": lambda: tch.sample(1, 0, tch.options(labels=label, steps=2000)),
            "naive head": lambda: ort.sample(1, 0, ort.options(labels=label, steps=field, fast=False)),
            "naive": lambda: ort.sample(1, 0, ort.options(labels=label, steps=field + steady, fast=False)),
        }, rounds)
        fast = np.median(t["fast"]) / 2000
        naive = (np.median(t["naive"]) - np.median(t["naive head"])) / steady
        print(f"WaveNet, receptive field {field}, batch 1 (ORT): fast {1 / fast:.0f} samples/s, naive {1 / naive:.0f} "
              f"samples/s -> fast is {naive / fast:.1f}x")
        versus_row("WaveNet fast generation, batch 1", t["fast"], t["torch"], "samples/s", 2000)
        t = timed({"ort": lambda: ort.sample(16, 0, ort.options(steps=500)),
                   "torch": lambda: tch.sample(16, 0, tch.options(steps=500))}, rounds)
        versus_row("WaveNet fast generation, batch 16", t["ort"], t["torch"], "samples/s", 16 * 500)


def images(out: Path, rounds: int) -> None:
    for name in ("pixelcnn", "made", "nade", "fvsbn"):
        bundle = zoo_bundle(name, out)
        with deploykit.load(bundle.path, options=ONE_THREAD) as ort, deploykit.load(bundle.path, "torch", ONE_THREAD) as tch:
            for batch in (1, 16):
                variants = {"ort": lambda: ort.sample(batch, 0), "torch": lambda: tch.sample(batch, 0)}
                if name == "nade" and batch == 16:
                    variants["full passes"] = lambda: sample_dimensionwise(ort.runners, bundle.loop, 16, 0)
                t = timed(variants, rounds)
                versus_row(f"{name} sampling, batch {batch}", t["ort"], t["torch"], "images/s", batch)
                print(f"{'':<36} per image: ORT {np.median(t['ort']) / batch * 1e3:.2f} ms, "
                      f"torch {np.median(t['torch']) / batch * 1e3:.2f} ms")
                if "full passes" in t:
                    print(f"{'':<36} NADE recursion vs 64 full passes, batch 16 (ORT): "
                          f"{np.median(t['full passes']) / np.median(t['ort']):.1f}x faster")


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
        bundle = zoo_bundle(name, out)
        with deploykit.load(bundle.path) as ort, deploykit.load(bundle.path, "torch") as tch:
            got, want = ort.log_prob(x, labels), tch.log_prob(x, labels)
        dims = x[0].size
        print(f"{name:<9} test NLL through ORT {-got.mean():8.3f} nats/example ({-got.mean() / dims / np.log(2):.3f} bits/dim); "
              f"max |ORT - torch| per example {np.abs(got - want).max():.2e} nats")


def main() -> None:
    args, rounds = arguments(__doc__, 5, 2, "")
    print(f"{rounds} interleaved rounds, rates median (p10-p90)\n{VERSUS_HEAD}")
    wavenet(args.out, rounds)
    images(args.out, rounds)
    likelihoods(args.out)


if __name__ == "__main__":
    main()
