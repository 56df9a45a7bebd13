"""Profile every zoo model: ORT-CPU vs torch eager, same threads, batch 1 and 32, one table from one run.

    python benchmarks/profile_zoo.py [--threads 1] [--iterations 300] [--out bundles/bench]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import deploykit
from deploykit.models import ZOO
from deploykit.sources import resolve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("bundles/bench"))
    args = parser.parse_args()
    print(f"{'model':<12} {'role':<8} {'batch':>5} {'ort p50 ms':>11} {'torch p50 ms':>13} {'ort items/s':>12} {'speedup':>8}")
    for name in ZOO:
        resolved = resolve(f"zoo:{name}")
        bundle = deploykit.export(resolved.model, resolved.family, args.out / name, force=True, source=resolved.source)
        report = deploykit.profile(bundle, ("ort-cpu", "torch"), (1, 32), args.iterations, 30, args.threads)
        torch_rows = {(r.role, r.batch): r for r in report.rows if r.backend == "torch"}
        for r in (r for r in report.rows if r.backend == "ort-cpu"):
            t = torch_rows[(r.role, r.batch)]
            print(
                f"{name:<12} {r.role:<8} {r.batch:>5} {r.p50_ms:>11.4f} {t.p50_ms:>13.4f} {r.items_per_s:>12.0f} "
                f"{r.speedup_vs_torch:>7.2f}x"
            )


if __name__ == "__main__":
    main()
