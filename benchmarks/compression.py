"""Lossless compression with the zoo's likelihood models (`deploykit compress`) beside general-purpose compressors, on
held-out data the models did not train on: text (stdlib docstrings, deploykit.models.data.held_out_text) for the
language models, the digits' test split for PixelCNN (4 levels) and FVSBN/MADE/NADE (binarized), tone clips of
another seed for WaveNet (mu-law codes).

Per model, in bits per symbol (a text byte, a pixel, an audio code): the whole file (header included), its code
alone, the model's own cross-entropy on the same data (the rate an ideal coder reaches), gzip -9, bzip2 -9, xz -9 and
zstd -19 on the same bytes (one byte per pixel or code), PNG for images (one grid image, optimized); then encode and
decode throughput in symbols/s (one thread, median of interleaved rounds). Decoding makes one model call per symbol,
and so does encoding (the same calls, so the file decodes bit-exactly).

    python benchmarks/compression.py [--models char-lm gpt pixelcnn made wavenet] [--rounds 3]
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import io
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
from deploykit.models.autoregressive import mu_law_encode
from deploykit.models.data import binarized_digits, held_out_text, level_digits, load_digits, tone_clips
from deploykit.sources import resolve


def _zstd(data: bytes) -> int | None:
    if shutil.which("zstd") is None:
        return None
    return len(subprocess.run(["zstd", "-19", "-c", "-q"], input=data, capture_output=True, check=True).stdout)


def _png(images: np.ndarray, levels: int) -> int:
    """Bytes of one PNG holding every image [N, 1, H, W] in a grid, 8-bit gray (levels stretched to 0..255)."""
    from PIL import Image

    n, _, h, w = images.shape
    cols = int(np.ceil(np.sqrt(n)))
    grid = np.zeros((cols * h, cols * w), np.uint8)
    for i, image in enumerate(images[:, 0]):
        grid[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] = image * (255 // (levels - 1))
    out = io.BytesIO()
    Image.fromarray(grid).save(out, format="PNG", optimize=True)
    return len(out.getvalue())


def _data(name: str, loop: object) -> tuple[bytes | np.ndarray, int]:
    """(held-out data, symbols in it)."""
    if name in ("char-lm", "gpt"):
        text = held_out_text(loop.vocab)[:4000].encode()
        return text, len(text)
    if name == "pixelcnn":
        x = level_digits(load_digits().x_test[:100], loop.levels)
    elif name == "wavenet":
        audio, _ = tone_clips(4, 1000, seed=7, sample_rate=loop.sample_rate)
        x = mu_law_encode(audio, loop.levels)
    else:
        x = binarized_digits(load_digits())[1][:200].astype(np.int64)
    return x, x.size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["char-lm", "gpt", "pixelcnn", "fvsbn", "made", "nade", "wavenet"])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"{'model':<9} {'symbols':>7} {'file':>6} {'code':>6} {'CE':>6} {'gzip-9':>7} {'bzip2-9':>7} {'xz-9':>6} "
          f"{'zstd-19':>7} {'PNG':>6}  {'encode sym/s':>12} {'decode sym/s':>12}   (bits per symbol)")
    with tempfile.TemporaryDirectory() as work:
        for name in args.models:
            resolved = resolve(f"zoo:{name}")
            bundle = deploykit.export(resolved.model, resolved.family, Path(work) / name, source=resolved.source)
            data, symbols = _data(name, bundle.loop)
            with deploykit.load(bundle.path, options=RunnerOptions(threads=1)) as dep:
                enc, dec = [], []
                for _ in range(args.rounds):  # encode and decode alternate round by round
                    start = time.perf_counter()
                    packed = dep.compress(data)
                    enc.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    back = dep.decompress(packed.data)
                    dec.append(time.perf_counter() - start)
                    assert back == data if isinstance(data, bytes) else np.array_equal(back, data)
            raw = data if isinstance(data, bytes) else data.astype(np.uint8).tobytes()
            others = [len(gzip.compress(raw, 9)), len(bz2.compress(raw, 9)), len(lzma.compress(raw, preset=9)),
                      _zstd(raw), _png(data, bundle.loop.levels) if name == "pixelcnn" else None]
            shown = " ".join(f"{8 * n / symbols:>{w}.3f}" if n else f"{'-':>{w}}" for n, w in zip(others, (7, 7, 6, 7, 6)))
            code = 8 * packed.code_bytes / symbols
            print(f"{name:<9} {symbols:>7} {8 * packed.length / symbols:>6.3f} {code:>6.3f} "
                  f"{packed.cross_entropy_bits / symbols:>6.3f} {shown}  {symbols / statistics.median(enc):>12.0f} "
                  f"{symbols / statistics.median(dec):>12.0f}")


if __name__ == "__main__":
    main()
