"""The documentation site builds with `mkdocs build --strict` (a broken link or a missing page fails), and its
reference pages are generated from the code: one per CLI command, one per family."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from deploykit.cli import app
from deploykit.exporters import FAMILIES

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_strict_with_a_page_per_command_and_family(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    commands = typer.main.get_command(app).commands
    for name in commands:
        page = (tmp_path / "site" / "reference" / "cli" / name / "index.html").read_text()
        assert f"deploykit {name}" in page
    sample = (tmp_path / "site" / "reference" / "cli" / "sample" / "index.html").read_text()
    assert "--scheduler" in sample and "Diffusion (ddpm, latent-diffusion, ncsn, text-to-image bundles)" in sample
    for name in FAMILIES:
        assert (tmp_path / "site" / "reference" / "families" / name / "index.html").is_file()


def test_a_broken_link_fails_our_build(tmp_path: Path) -> None:
    """Our mkdocs.yml (strict, link validation as warnings) turns a link to a missing page into a failed build."""
    pytest.importorskip("mkdocs")
    shutil.copytree(ROOT / "docs", tmp_path / "docs", ignore=shutil.ignore_patterns("reference"))
    shutil.copyfile(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    with open(tmp_path / "docs" / "pruning.md", "a") as page:
        page.write("\nSee [the old page](sparsity.md).\n")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode != 0 and "sparsity.md" in run.stdout + run.stderr
