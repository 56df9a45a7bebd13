"""Normalizing-flow sampling: MAF at D=64 as host loop vs in-graph scan vs torch; Glow / RealNVP ORT vs torch.

    python benchmarks/flow_sampling.py [--out bundles/bench] [--rounds 7] [--quick]

One thread per backend, variants in alternating rounds, median (p10-p90). The MAF is 5 layers of MADE(64, 256-256) with random weights near
the identity (speed does not depend on training); Glow and RealNVP are the trained digit zoo models.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from timing import ONE_THREAD, VERSUS_HEAD, arguments, spread, timed, versus_row, zoo_bundle

import deploykit
from deploykit.models.data import level_digits, load_digits
from deploykit.models.flows import MAF


def maf(out: Path, rounds: int) -> None:
    """Sampling needs 64 MADE passes per layer: host loop (one ORT call per pass), in-graph Scan, torch loop."""
    torch.manual_seed(0)
    model = MAF(dim=64, hidden=(256, 256), layers=5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    bundle = deploykit.export(model, "maf", out / "maf64", force=True)
    with deploykit.load(bundle.path, options=ONE_THREAD) as ort, deploykit.load(bundle.path, "torch", ONE_THREAD, model) as tch:
        for batch in (1, 64):
            t = timed({"graph": lambda: ort.sample(batch, 0), "host": lambda: ort.sample(batch, 0, ort.options(host=True)),
                       "torch": lambda: tch.sample(batch, 0)}, rounds)
            graph, host, ref = (float(np.median(t[k])) for k in ("graph", "host", "torch"))
            print(f"MAF D=64, 5 layers, batch {batch}: in-graph {spread(t['graph'])} ms, host loop {spread(t['host'])} "
                  f"ms, torch loop {spread(t['torch'])} ms -> in-graph is {host / graph:.2f}x the host loop, "
                  f"{ref / graph:.2f}x torch")
            versus_row(f"MAF sampling (in-graph), batch {batch}", t["graph"], t["torch"], "samples/s", batch)
            versus_row(f"MAF sampling (host loop), batch {batch}", t["host"], t["torch"], "samples/s", batch)


def images(out: Path, rounds: int) -> None:
    pixels = level_digits(load_digits().x_test, 17)
    x64 = ((pixels[:64] + 0.5) / 17).astype("float32")  # pixel centres in [0, 1)
    for name in ("glow-digits", "realnvp-digits"):
        bundle = zoo_bundle(name, out)
        with deploykit.load(bundle.path, options=ONE_THREAD) as ort, deploykit.load(bundle.path, "torch", ONE_THREAD) as tch:
            for batch in (1, 64):
                t = timed({"ort": lambda: ort.sample(batch, 0, ort.options(temperature=0.8)),
                           "torch": lambda: tch.sample(batch, 0, tch.options(temperature=0.8))}, rounds)
                versus_row(f"{name} sampling, batch {batch}", t["ort"], t["torch"], "images/s", batch)
            t = timed({"ort": lambda: ort.log_prob(x64), "torch": lambda: tch.log_prob(x64)}, rounds)
            versus_row(f"{name} log_prob, batch 64", t["ort"], t["torch"], "images/s", 64)
            print(f"{name}: test bits/dim through ORT {ort.bits_per_dim(pixels, seed=0).mean():.3f}")


def main() -> None:
    args, rounds = arguments(__doc__, 7, 2, "")
    print(f"{rounds} interleaved rounds, rates median (p10-p90)\n{VERSUS_HEAD}")
    maf(args.out, rounds)
    images(args.out, rounds)


if __name__ == "__main__":
    main()
