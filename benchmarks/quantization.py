"""fp16 / int8 on the zoo: accuracy change in user terms, max abs error vs torch, size and speed against fp32.

Every model is exported (trained first if not cached), quantized three ways, and profiled on
ORT-CPU with one thread at batch 1 and 32 next to its fp32 bundle. One table, one run.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import deploykit
from deploykit.errors import DeploykitError
from deploykit.models import test_split
from deploykit.precision import QUANT_MODES, quantize
from deploykit.sources import resolve

MODELS = sys.argv[1:] or ["cnn", "vit", "cgan", "glow-digits", "pixelcnn", "ddpm-digits"]


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="quant-"))
    head = (f"{'model':<12} {'mode':<13} {'metric':<44} {'fp32':>8} {'quant':>8} {'max abs':>8} "
            f"{'size':>6} {'b1 speed':>8} {'b32 speed':>9}")
    print(head + "\n" + "-" * len(head), flush=True)
    for name in MODELS:
        resolved = resolve(f"zoo:{name}")
        source = deploykit.export(resolved.model, resolved.family, work / name, source=resolved.source)
        for mode in QUANT_MODES:
            try:
                q = quantize(source, mode, work / f"{name}-{mode}", calibration=16, labelled=test_split(name))
            except DeploykitError as exc:
                print(f"{name:<12} {mode:<13} refused: {str(exc)[:100]}", flush=True)
                continue
            report = deploykit.profile(q, backends=["ort-cpu"], batches=[1, 32], iterations=50, warmup=5,
                                       against=source)
            speed = {r.batch: r.speedup_vs_against for r in report.rows}
            size = sum(own for _, own in report.sizes.values()) / sum(full for full, _ in report.sizes.values())
            rows = q.manifest["precision"]["accuracy"]
            for i, r in enumerate(rows):
                tail = (f"{q.manifest['precision']['measured_max_abs']:>8.1e} {size:>5.2f}x {speed[1]:>7.2f}x {speed[32]:>8.2f}x"
                        if i == 0 else "")
                print(f"{name if i == 0 else '':<12} {mode if i == 0 else '':<13} {r['metric'][:44]:<44} "
                      f"{r['fp32']:>8.4g} {r['quantized']:>8.4g} {tail}", flush=True)
    print("speed: fp32 p50 / quantized p50 on ORT-CPU, 1 thread (>1: quantized is faster); size: graph bytes vs fp32")


if __name__ == "__main__":
    main()
