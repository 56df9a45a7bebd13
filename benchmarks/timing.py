"""Timing that a shared, noisy machine cannot bias: variants run in alternating rounds (the order reverses every
round) and are summarized by median and p10-p90. Also the helpers every benchmark shares: its options, the zoo
bundles it exports, one-thread runners, and the ORT-vs-torch row."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

import deploykit
from deploykit.backends import RunnerOptions
from deploykit.sources import resolve

ONE_THREAD = RunnerOptions(threads=1)


def interleaved(variants: Mapping[str, Callable[[], Any]], rounds: int,
                after: Callable[[str, float], None] | None = None) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """(wall seconds per variant per round, each variant's last result); `after(name, seconds)` sees every run."""
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    results: dict[str, Any] = {}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            results[name] = variants[name]()
            seconds = time.perf_counter() - start
            times[name].append(seconds)
            if after is not None:
                after(name, seconds)
    return times, results


def timed(variants: Mapping[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """Wall seconds per variant per round, after one untimed warm-up run of each, the variants interleaved."""
    for run in variants.values():
        run()
    return interleaved(variants, rounds)[0]


def spread(values: list[float] | np.ndarray, scale: float = 1e3, fmt: str = ".1f") -> str:
    """'median (p10-p90)' of values times `scale` (default: seconds as ms)."""
    v = np.asarray(values) * scale
    return f"{np.median(v):{fmt}} ({np.percentile(v, 10):{fmt}}-{np.percentile(v, 90):{fmt}})"


def rate(work: float, seconds: list[float]) -> str:
    """'median (p10-p90)' of work per second over the rounds."""
    return spread(work / np.asarray(seconds), 1.0)


def versus_row(label: str, ort: list[float], torch: list[float], unit: str, work: float) -> None:
    """One ORT-vs-torch row: work per second, median (p10-p90) each, and the ratio of the medians."""
    print(f"{label:<36} {rate(work, ort):>24} {rate(work, torch):>24}  {unit:<10} "
          f"{np.median(torch) / np.median(ort):>6.2f}x")


VERSUS_HEAD = f"{'':<36} {'ORT':>24} {'torch':>24}  {'unit':<10} {'ORT/torch':>6}"


def zoo_bundle(name: str, out: Path) -> deploykit.Bundle:
    """The zoo model `name` exported (fresh) under `out`."""
    resolved = resolve(f"zoo:{name}")
    return deploykit.export(resolved.model, resolved.family, out / name, force=True, source=resolved.source)


def arguments(doc: str, rounds: int, quick_rounds: int, quick_help: str,
              extra: Callable[[argparse.ArgumentParser], None] | None = None) -> tuple[argparse.Namespace, int]:
    """(--out, --rounds, --quick and `extra`'s options parsed, the number of rounds to run): the options every
    interleaved benchmark takes."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bundles/bench"))
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--quick", action="store_true", help=f"CI smoke: {quick_rounds} rounds{quick_help}")
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    return args, quick_rounds if args.quick else args.rounds
