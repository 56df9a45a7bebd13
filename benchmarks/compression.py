"""Lossless compression with the zoo language models (`deploykit compress`) beside general-purpose compressors, on
held-out text the models did not train on (stdlib docstrings, deploykit.models.data.held_out_text).

Per model: the file's size in bits per byte, the model's own cross-entropy on the same tokens (the rate an ideal coder
reaches; the gap is the range coder's precision and the header), gzip -9, bzip2 -9, xz -9 and zstd -19 on the same
bytes, and encode / decode throughput in bytes/s (one thread, median of interleaved rounds) beside the time of one
model call per token, which is what decoding costs: a token needs the previous one.

    python benchmarks/compression.py [--models char-lm gpt] [--bytes 4000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import lzma
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

import deploykit
from deploykit.backends import RunnerOptions
from deploykit.models.data import held_out_text
from deploykit.sources import resolve


def _zstd(data: bytes) -> int | None:
    if shutil.which("zstd") is None:
        return None
    run = subprocess.run(["zstd", "-19", "-c", "-q"], input=data, capture_output=True, check=True)
    return len(run.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["char-lm", "gpt"])
    parser.add_argument("--bytes", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"{'model':<8} {'bytes':>6} {'deploykit':>9} {'model CE':>8} {'gap':>6} {'gzip-9':>7} {'bzip2-9':>7} "
          f"{'xz-9':>6} {'zstd-19':>7}  {'encode B/s':>10} {'decode B/s':>10} {'1 call/token B/s':>16}   (bits/byte)")
    with tempfile.TemporaryDirectory() as work:
        for name in args.models:
            resolved = resolve(f"zoo:{name}")
            bundle = deploykit.export(resolved.model, resolved.family, Path(work) / name, source=resolved.source)
            data = held_out_text(bundle.loop.vocab)[: args.bytes].encode()
            with deploykit.load(bundle.path, options=RunnerOptions(threads=1)) as dep:
                enc, dec, calls = [], [], []
                for _ in range(args.rounds):  # encode, decode and the bare model calls alternate round by round
                    start = time.perf_counter()
                    packed = dep.compress(data)
                    enc.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    assert dep.decompress(packed.data) == data
                    dec.append(time.perf_counter() - start)
                    model = dep.kind.token_model(dep.runners, dep.loop)
                    start = time.perf_counter()
                    model.start([np.asarray([0])])
                    for _ in range(min(len(data), 200)):
                        model.step(np.asarray([0]))
                    calls.append((time.perf_counter() - start) / min(len(data), 200))
            tokens = packed.header.tokens
            rate = packed.bits_per_byte
            ce = packed.cross_entropy_bits / len(data)
            others = [len(gzip.compress(data, 9)), len(bz2.compress(data, 9)), len(lzma.compress(data, preset=9)),
                      _zstd(data)]
            shown = " ".join(f"{8 * n / len(data):>7.3f}" if n else f"{'-':>7}" for n in others)
            print(f"{name:<8} {len(data):>6} {rate:>9.3f} {ce:>8.3f} {100 * (rate / ce - 1):>5.1f}% {shown}  "
                  f"{len(data) / statistics.median(enc):>10.0f} {len(data) / statistics.median(dec):>10.0f} "
                  f"{len(data) / (tokens * statistics.median(calls)):>16.0f}")


if __name__ == "__main__":
    main()
