"""Argument checks shared by the library, the CLI and Triton: integers in range, counts, seeds, memory (and handing
freed memory back)."""

from __future__ import annotations

import ctypes
import gc
import os

import numpy as np

from .errors import InputError

INT32_MAX = 2**31 - 1


def check_int(option: str, value: int, low: int, high: int | None = None, meaning: str = "") -> None:
    """InputError unless `value` is an integer in [low, high] (no upper bound when high is None); the message names
    the option and what it means."""
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low
            or (high is not None and value > high)):
        bound = f">= {low}" if high is None else f"in {low}..{high}"
        raise InputError(f"{option} is {value!r}, expected an integer {bound}{f' ({meaning})' if meaning else ''}.")


def check_count(n: int) -> None:
    """InputError unless n is an integer >= 1 (samples asked for)."""
    check_int("--n", n, 1, meaning="the number of samples")


def check_seed(seed: int) -> None:
    """InputError unless the seed is an integer >= 0 (numpy's generators take no negative seeds)."""
    check_int("--seed", seed, 0)


def available_bytes() -> int | None:
    """Memory the OS can give now (Linux: free + reclaimable pages), or None where it does not say."""
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(need: int, request: str, fix: str) -> None:
    """InputError when `request` needs more than half the memory available now. Checked up front because Linux
    overcommits: numpy's allocation succeeds and the process is killed later, when the pages are touched."""
    available = available_bytes()
    if available is not None and need > available // 2:
        raise InputError(f"{request} needs {need / 2**30:.1f} GiB, more than half of the {available / 2**30:.1f} GiB "
                         f"available; {fix}.")


def release_memory(collect: bool = True) -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise), after collecting garbage cycles (the
    exported program) unless `collect` is False: arrays are freed as soon as they are dropped, cycles need gc."""
    if collect:
        gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
