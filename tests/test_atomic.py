"""Replacing a bundle (--force) is atomic: a run killed at any step leaves the old bundle or the new one, and the
next run puts back what an interrupted fallback replace set aside and removes stray staging folders."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from deploykit.bundle import _clean_strays, staging

# Each scenario kills the replacing process (os._exit, like kill -9: no cleanup runs) at one step.
KILLER = textwrap.dedent("""
    import os, shutil, sys
    from pathlib import Path
    import deploykit.bundle as B
    out, where = Path(sys.argv[1]), sys.argv[2]
    real_rename, real_exchange, real_rmtree = os.rename, B._exchange, shutil.rmtree
    renames = []
    def rename(a, b):
        renames.append(a)
        if where == f"rename{len(renames)}":
            os._exit(137)
        real_rename(a, b)
    def exchange(a, b):
        if where.startswith("rename") or where == "after-renames":
            return False  # the fallback: two renames
        swapped = real_exchange(a, b)
        if where == "after-exchange":
            os._exit(137)
        return swapped
    def rmtree(path, *args, **kwargs):
        if where in ("after-exchange", "after-renames") and ".old-" in str(path):
            os._exit(137)
        real_rmtree(path, *args, **kwargs)
    os.rename, B._exchange, shutil.rmtree = rename, exchange, rmtree
    with B.staging(out, force=True) as tmp:
        (tmp / "manifest.json").write_text("new")
        if where == "filling":
            os._exit(137)
""")


@pytest.mark.parametrize(("where", "right_after", "finally_"), [
    ("filling", "old", "old"),
    ("after-exchange", "new", "new"),
    ("rename1", "old", "old"),
    ("rename2", None, "old"),  # between the fallback's two renames: nothing at out until the next run
    ("after-renames", "new", "new"),
])
def test_a_replace_killed_at_any_step_loses_nothing(tmp_path: Path, where: str, right_after: str | None,
                                                    finally_: str) -> None:
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "manifest.json").write_text("old")
    run = subprocess.run([sys.executable, "-c", KILLER, str(out), where], capture_output=True, text=True, timeout=120)
    assert run.returncode == 137, run.stderr
    now = (out / "manifest.json").read_text() if out.exists() else None
    assert now == right_after
    _clean_strays(out)  # what the next export / quantize / pack does first
    assert (out / "manifest.json").read_text() == finally_
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_strays_of_a_live_run_are_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    with staging(out, force=False) as tmp:
        (tmp / "manifest.json").write_text("new")
        _clean_strays(out)  # another process's cleanup while this one still writes
        assert tmp.exists()
    assert (out / "manifest.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
