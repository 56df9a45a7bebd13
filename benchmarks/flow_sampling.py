"""Normalizing-flow sampling: MAF at D=64 as host loop vs in-graph scan vs torch; Glow / RealNVP ORT vs torch.

    python benchmarks/flow_sampling.py [--out bundles/bench]

One thread per backend, one run. The MAF is 5 layers of MADE(64, 256-256) with random weights near
the identity (speed does not depend on training); Glow and RealNVP are the trained digit zoo models.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from recurrent_loops import ONE_THREAD, _best_of, _bundle, _row

import deploykit
from deploykit.models.data import level_digits, load_digits
from deploykit.models.flows import MAF


def maf(out: Path) -> None:
    """Sampling needs 64 MADE passes per layer: host loop (one ORT call per pass), in-graph Scan, torch loop."""
    torch.manual_seed(0)
    model = MAF(dim=64, hidden=(256, 256), layers=5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    bundle = deploykit.export(model, "maf", out / "maf64", force=True)
    with deploykit.load(bundle.path, options=ONE_THREAD) as ort, deploykit.load(bundle.path, "torch", ONE_THREAD, model) as tch:
        for batch in (1, 64):
            graph = _best_of(lambda: ort.sample(batch, 0))
            host = _best_of(lambda: ort.sample(batch, 0, ort.options(host=True)))
            ref = _best_of(lambda: tch.sample(batch, 0))
            print(f"MAF D=64, 5 layers, batch {batch}: in-graph {graph * 1e3:.1f} ms, host loop {host * 1e3:.1f} ms, "
                  f"torch loop {ref * 1e3:.1f} ms -> in-graph is {host / graph:.2f}x the host loop, {ref / graph:.2f}x torch")
            _row(f"MAF sampling (in-graph), batch {batch}", graph, ref, "samples/s", batch)
            _row(f"MAF sampling (host loop), batch {batch}", host, ref, "samples/s", batch)


def images(out: Path) -> None:
    pixels = level_digits(load_digits().x_test, 17)
    x64 = ((pixels[:64] + 0.5) / 17).astype("float32")  # pixel centres in [0, 1)
    for name in ("glow-digits", "realnvp-digits"):
        bundle = _bundle(name, out)
        with deploykit.load(bundle.path, options=ONE_THREAD) as ort, deploykit.load(bundle.path, "torch", ONE_THREAD) as tch:
            for batch in (1, 64):
                o = _best_of(lambda: ort.sample(batch, 0, ort.options(temperature=0.8)))
                t = _best_of(lambda: tch.sample(batch, 0, tch.options(temperature=0.8)))
                _row(f"{name} sampling, batch {batch}", o, t, "images/s", batch)
            o = _best_of(lambda: ort.log_prob(x64))
            t = _best_of(lambda: tch.log_prob(x64))
            _row(f"{name} log_prob, batch 64", o, t, "images/s", 64)
            print(f"{name}: test bits/dim through ORT {ort.bits_per_dim(pixels, seed=0).mean():.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bundles/bench"))
    args = parser.parse_args()
    print(f"{'':<34} {'ORT':>12} {'torch':>12}  {'unit':<10} {'ratio':>7}")
    maf(args.out)
    images(args.out)


if __name__ == "__main__":
    main()
