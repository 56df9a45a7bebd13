"""Diffusion and energy sampling: denoiser step latency, DDPM-1000 vs DDIM-50, batched vs two-call guidance,
in-graph (ONNX Scan) vs host loop, ORT vs torch, and how the ORT - torch gap grows with the number of steps.

    python benchmarks/diffusion_sampling.py [--out bundles/bench] [--rounds 5] [--quick]

One thread per backend, variants in alternating rounds (median, p10-p90), the trained zoo models (class-conditional DDPM U-Net on 8x8 digits,
Bernoulli RBM). Loops: the same numpy scheduler and injected noise over each backend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from timing import ONE_THREAD, VERSUS_HEAD, arguments, spread, timed, versus_row, zoo_bundle

import deploykit
from deploykit.runtimes.energy import gibbs_chain

BATCH = 16


def denoiser_step(ort: deploykit.Deployment, tch: deploykit.Deployment, rounds: int) -> None:
    for batch in (1, BATCH):
        rng = np.random.default_rng(0)
        feeds = {"x": rng.standard_normal((batch, 1, 8, 8), dtype=np.float32), "t": np.full(batch, 500),
                 "label": np.arange(batch) % 10}
        t = timed({"ort": lambda: [ort.infer(feeds, "denoiser") for _ in range(50)],
                   "torch": lambda: [tch.infer(feeds, "denoiser") for _ in range(50)]}, rounds)
        print(f"denoiser step, batch {batch}: ORT {spread(np.asarray(t['ort']) / 50, fmt='.3f')} ms, "
              f"torch {spread(np.asarray(t['torch']) / 50, fmt='.3f')} ms")
        versus_row(f"denoiser step, batch {batch}", t["ort"], t["torch"], "images/s", 50 * batch)


def loops(ort: deploykit.Deployment, tch: deploykit.Deployment, rounds: int) -> None:
    labels = np.arange(BATCH) % 10
    runs = {
        "DDPM 1000, host": (1000, True, dict(scheduler="ddpm")),
        "DDPM 1000, in-graph": (1000, False, dict(scheduler="ddpm")),
        "DDIM 50, host": (50, True, dict(scheduler="ddim")),
        "DDIM 50, in-graph": (50, False, dict(scheduler="ddim")),
        "DDIM 50 + CFG batched, host": (50, True, dict(scheduler="ddim", guidance=3.0)),
        "DDIM 50 + CFG two calls, host": (50, True, dict(scheduler="ddim", guidance=3.0, batched=False)),
        "DDIM 50 + CFG, in-graph": (50, False, dict(scheduler="ddim", guidance=3.0)),
    }
    times = {}
    for name, (steps, host, options) in runs.items():
        t = timed({"ort": lambda: ort.sample(BATCH, 0, ort.options(labels=labels, steps=steps, host=host, **options)),
                   "torch": lambda: tch.sample(BATCH, 0, tch.options(labels=labels, steps=steps, host=True, **options))},
                  rounds)
        times[name] = float(np.median(t["ort"]))
        versus_row(f"{name}, batch {BATCH}", t["ort"], t["torch"], "images/s", BATCH)
    print(f"DDPM 1000 / DDIM 50 wall time (ORT host): {times['DDPM 1000, host'] / times['DDIM 50, host']:.1f}x")
    print(f"CFG two calls / batched (ORT host): {times['DDIM 50 + CFG two calls, host'] / times['DDIM 50 + CFG batched, host']:.2f}x")
    for name in ("DDPM 1000", "DDIM 50", "DDIM 50 + CFG"):
        host = times[f"{name}, host" if name != "DDIM 50 + CFG" else "DDIM 50 + CFG batched, host"]
        print(f"{name}: in-graph {times[f'{name}, in-graph'] * 1e3:.0f} ms vs host {host * 1e3:.0f} ms "
              f"({host / times[f'{name}, in-graph']:.2f}x)")


def error_growth(ort: deploykit.Deployment, tch: deploykit.Deployment) -> None:
    """Final-sample gap ORT vs torch (same noise) as the loop gets longer."""
    labels = np.arange(8)
    for name, options in (("DDPM", dict(scheduler="ddpm")), ("DDIM eta=0, w=3", dict(scheduler="ddim", guidance=3.0))):
        for steps in (1, 10, 50, 200, 1000):
            a = ort.sample(8, 5, ort.options(labels=labels, steps=steps, host=True, **options))
            b = tch.sample(8, 5, tch.options(labels=labels, steps=steps, host=True, **options))
            gap = np.abs(a - b)
            print(f"{name:<16} {steps:>5} steps: max |ORT - torch| {gap.max():.2e}, mean {gap.mean():.2e}")


def gibbs(out: Path, rounds: int) -> None:
    bundle = zoo_bundle("rbm-digits", out)
    with deploykit.load(bundle.path, options=ONE_THREAD) as ort, deploykit.load(bundle.path, "torch", ONE_THREAD) as tch:
        runner, loop = ort.runner("gibbs"), bundle.loop
        t = timed({"graph": lambda: gibbs_chain(runner, loop, BATCH, 1000, 0),
                   "host": lambda: gibbs_chain(runner, loop, BATCH, 1000, 0, per_call=1),
                   "torch": lambda: gibbs_chain(tch.runner("gibbs"), loop, BATCH, 1000, 0)}, rounds)
        versus_row(f"RBM 1000 Gibbs steps in-graph, b{BATCH}", t["graph"], t["torch"], "chains/s", BATCH)
        versus_row(f"RBM 1000 Gibbs steps host loop, b{BATCH}", t["host"], t["torch"], "chains/s", BATCH)
        print(f"RBM: in-graph {spread(t['graph'], fmt='.0f')} ms vs host loop {spread(t['host'], fmt='.0f')} ms "
              f"({np.median(t['host']) / np.median(t['graph']):.1f}x)")


def main() -> None:
    args, rounds = arguments(__doc__, 5, 2, "")
    print(f"{rounds} interleaved rounds, rates median (p10-p90)\n{VERSUS_HEAD}")
    bundle = zoo_bundle("ddpm-digits", args.out)
    with deploykit.load(bundle.path, options=ONE_THREAD) as ort, deploykit.load(bundle.path, "torch", ONE_THREAD) as tch:
        denoiser_step(ort, tch, rounds)
        loops(ort, tch, rounds)
        error_growth(ort, tch)
    gibbs(args.out, rounds)


if __name__ == "__main__":
    main()
