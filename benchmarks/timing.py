"""Timing that a shared, noisy machine cannot bias: variants run in alternating rounds (the order reverses every
round) and are summarized by median and p10-p90."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np


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


def spread(values: list[float], scale: float = 1e3, fmt: str = ".1f") -> str:
    """'median (p10-p90)' of values times `scale` (default: seconds as ms)."""
    v = np.asarray(values) * scale
    return f"{np.median(v):{fmt}} ({np.percentile(v, 10):{fmt}}-{np.percentile(v, 90):{fmt}})"


def arguments(doc: str, rounds: int, quick_rounds: int, quick_help: str) -> tuple[argparse.Namespace, int]:
    """(--out, --rounds, --quick parsed, the number of rounds to run): the options every interleaved benchmark takes."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bundles/bench"))
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--quick", action="store_true", help=f"CI smoke: {quick_rounds} rounds{quick_help}")
    args = parser.parse_args()
    return args, quick_rounds if args.quick else args.rounds
