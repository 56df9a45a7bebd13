"""Serve a generator and a sampling-loop bundle with a real tritonserver; load-test it from this process.

Run with the Triton environment's Python (`make triton-env`; nvidia-pytriton pins numpy<2):

    .venv-triton/bin/python benchmarks/triton_serving.py --generator bundles/cgan --loop bundles/ddpm

`make bench-triton` exports the zoo conditional GAN and DDPM, then runs this. Prints requests/s,
p50/p99 latency, errors and mismatches (every response against the same request run locally on
onnxruntime), and how many requests Triton's dynamic batcher merged per execution.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from deploykit.bundle import load_bundle
from deploykit.triton import TritonOptions, write_repository
from deploykit.triton.loadtest import graph_requests, loop_requests, run_load, server_counts
from deploykit.triton.server import TritonServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", type=Path, required=True, help="a generator bundle (e.g. zoo:cgan)")
    parser.add_argument("--loop", type=Path, required=True, help="a diffusion bundle (e.g. zoo:ddpm-digits)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=400, help="requests to each graph / generator model")
    parser.add_argument("--loop-requests", type=int, default=64, help="requests to the diffusion loop model")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps per diffusion request")
    parser.add_argument("--graph-backend", default="python", help="python here (the wheel has no ORT backend)")
    parser.add_argument("--python", type=Path, default=Path(sys.executable), help="the Triton environment's Python")
    parser.add_argument("--json", type=Path, help="write the reports as JSON")
    args = parser.parse_args()

    generator, diffusion = load_bundle(args.generator), load_bundle(args.loop)
    options = TritonOptions(graph_backend=args.graph_backend, loop_instances=min(args.clients, 4))
    work = Path(tempfile.mkdtemp(prefix="triton-repos-"))
    records = [write_repository(b, work / b.path.name, options) for b in (generator, diffusion)]
    gname, dname = (r["loop_model"]["model"] for r in records)
    plans = [  # (model, requests, tolerance)
        (records[0]["graph_models"]["model"]["model"], graph_requests(generator, "model", args.requests), generator),
        (gname, loop_requests(generator, args.requests), generator),
        (records[1]["graph_models"]["denoiser"]["model"], graph_requests(diffusion, "denoiser", args.requests), diffusion),
        (dname, loop_requests(diffusion, args.loop_requests, steps=args.steps, scheduler="ddim",
                              guidance=3.0), diffusion),
    ]
    reports = []
    graph_models = [g["model"] for r in records for g in r["graph_models"].values()]
    with TritonServer([work / r.path.name for r in (generator, diffusion)], args.python) as server:
        for model, requests, bundle in plans:
            before = server_counts(server.url, graph_models)
            report = run_load(server.url, model, requests, args.clients, bundle.tolerance)
            after = server_counts(server.url, graph_models)
            report.requests_per_execution = {
                m: (after[m][0] - before[m][0]) / (after[m][1] - before[m][1]) for m in graph_models if after[m] != before[m]
            }
            reports.append(report)
    head = f"{'model':<22} {'clients':>7} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'mismatch':>8} {'max abs':>9}"
    print(f"tritonserver 2.51 on 127.0.0.1, {args.graph_backend} graph models, {options.loop_instances} loop instances")
    print(head)
    print("-" * len(head))
    for r in reports:
        print(f"{r.model:<22} {r.clients:>7} {r.requests:>8} {r.requests_per_s:>8.1f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} "
              f"{r.errors:>6} {r.mismatches:>8} {r.max_abs_error:>9.2e}")
        for m, merged in r.requests_per_execution.items():
            print(f"    {m}: {merged:.2f} requests merged per execution by the dynamic batcher")
        if r.first_error:
            print(f"    first error: {r.first_error}")
    if args.json:
        args.json.write_text(json.dumps([r.to_json() for r in reports], indent=2))


if __name__ == "__main__":
    main()
