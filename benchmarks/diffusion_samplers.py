"""Samplers on the zoo DDPM (class-conditional U-Net, 8x8 digits): wall time and sample quality of DDPM-1000,
DDIM-50, Euler-30, Euler ancestral-30, Heun-15 and DPM-Solver++(2M)-20 (Karras sigmas off/on), host loop vs
in-graph (ONNX Scan).

    python benchmarks/diffusion_samplers.py [--out bundles/bench] [--rounds 5] [--quick]

ORT-CPU, one thread. Timing: every variant runs once per round, in alternating order (round r runs the list
forwards when r is even, backwards when odd), batch 16; median and p10-p90 over the rounds. Quality: 100
samples at guidance 3 (10 per class), clamped to [-1, 1] as diffusers' pipelines do: label accuracy read by the
zoo CNN and the nearest-neighbour distance ratio (samples to their nearest training digit over held-out digits
to theirs: about 1 is data-like, noise scores far higher).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from timing import ONE_THREAD, arguments, interleaved, spread, zoo_bundle

import deploykit
from deploykit.models.data import load_digits
from deploykit.models.train import nearest_distance_ratio
from deploykit.runtimes.diffusion import scheduler_for

SAMPLERS = [("DDPM", "ddpm", 1000, {}), ("DDIM", "ddim", 50, {}), ("Euler", "euler", 30, {}),
            ("Euler", "euler", 30, {"karras": True}), ("Euler-a", "euler-a", 30, {}),
            ("Euler-a", "euler-a", 30, {"karras": True}), ("Heun", "heun", 15, {}), ("Heun", "heun", 15, {"karras": True}),
            ("DPM++2M", "dpm++2m", 20, {}), ("DPM++2M", "dpm++2m", 20, {"karras": True})]
BATCH, QUALITY_N, GUIDANCE = 16, 100, 3.0


def main() -> None:
    args, rounds = arguments(__doc__, 5, 2, ", DDPM at 100 steps")
    samplers = [(label, name, 100 if args.quick and name == "ddpm" else steps, extra)
                for label, name, steps, extra in SAMPLERS]
    variants = [(s, host) for s in samplers for host in (True, False)]
    ddpm, cnn = zoo_bundle("ddpm-digits", args.out), zoo_bundle("cnn", args.out)
    data = load_digits()
    labels = np.arange(BATCH) % 10
    with deploykit.load(ddpm.path, options=ONE_THREAD) as dep, deploykit.load(cnn.path, options=ONE_THREAD) as reader:
        def run(steps: int, name: str, host: bool, extra: dict) -> Callable[[], object]:
            return lambda: dep.sample(BATCH, 0, dep.options(labels=labels, steps=steps, scheduler=name, host=host,
                                                            guidance=GUIDANCE, **extra))

        times, _ = interleaved({str(i): run(s[2], s[1], host, s[3]) for i, (s, host) in enumerate(variants)}, rounds)
        print(f"zoo DDPM, batch {BATCH}, guidance {GUIDANCE}, {rounds} interleaved rounds, ORT-CPU 1 thread")
        print(f"{'sampler':<22} {'calls':>5} {'host ms (p10-p90)':>22} {'in-graph ms (p10-p90)':>24} {'graph/host':>10} "
              f"{'acc':>5} {'nn-ratio':>8} {'|host-graph|':>12}")
        quality_labels = np.arange(QUALITY_N) % 10
        for k, (label, name, steps, extra) in enumerate(samplers):
            host_t, graph_t = times[str(2 * k)], times[str(2 * k + 1)]
            options = dict(labels=quality_labels, steps=steps, scheduler=name, guidance=GUIDANCE, **extra)
            host = dep.sample(QUALITY_N, 0, dep.options(host=True, **options))
            graph = dep.sample(QUALITY_N, 0, dep.options(**options))
            images = np.clip(host, -1, 1)
            acc = float((reader.infer({"image": (images + 1) / 2})["logits"].argmax(1) == quality_labels).mean())
            ratio = nearest_distance_ratio(images, data)
            calls = len(scheduler_for(dep.bundle.loop, dep.options(**options)).timesteps)
            title = f"{label}-{steps}" + (" Karras" if extra.get("karras") else "")

            print(f"{title:<22} {calls:>5} {spread(host_t):>22} {spread(graph_t):>24} "
                  f"{np.median(graph_t) / np.median(host_t):>9.2f}x {acc:>5.2f} {ratio:>8.2f} "
                  f"{np.abs(host - graph).max():>12.1e}")


if __name__ == "__main__":
    main()
