"""The CLI end to end, and every user error: exit code 2, a short message with the fix, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deploykit.cli import main
from deploykit.models import cached_checkpoint

REPO = Path(__file__).resolve().parents[1]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_zoo_train_export_inspect_verify_sample_profile(capsys, tmp_path: Path) -> None:
    # the Hopfield network "trains" (stores its patterns) in a blink, so the CLI path is tested without a long fit
    code, out, _ = run(capsys, "zoo", "train", "hopfield-digits", "--out", tmp_path / "hop.pt")
    assert code == 0 and "recovered_from_10pct_flips" in out
    code, out, _ = run(capsys, "export", f"zoo:hopfield-digits@{tmp_path / 'hop.pt'}", "--out", tmp_path / "b")
    assert code == 0 and "exported zoo:hopfield-digits" in out
    code, out, _ = run(capsys, "inspect", tmp_path / "b")
    assert code == 0 and "[batch, 64]" in out and "update.onnx" in out and "opset" in out
    checkpoint = ["--source", tmp_path / "hop.pt"]  # a bundle's record of its checkpoint is never opened
    code, out, _ = run(capsys, "verify", tmp_path / "b", "--json", tmp_path / "v.json", "--seed", "5", *checkpoint)
    report = json.loads((tmp_path / "v.json").read_text())
    assert code == 0 and "PASS" in out and report["passed"]
    assert {r["case"].split()[0] for r in report["rows"]} == {"golden", "fresh"}
    code, out, _ = run(capsys, "sample", tmp_path / "b", "--n", "64", "--seed", "0", "--out", tmp_path / "grid.png")
    assert code == 0 and Image.open(tmp_path / "grid.png").size == (73 * 4, 73 * 4)
    run(capsys, "sample", tmp_path / "b", "--n", "5", "--out", tmp_path / "s.npy")
    assert np.load(tmp_path / "s.npy").shape == (5, 64)
    args = ["profile", tmp_path / "b", "--batch", "1", "--batch", "4", "--iterations", "5", "--warmup", "1"]
    code, out, _ = run(capsys, *args, "--json", tmp_path / "p.json", "--plot", tmp_path / "p.png", *checkpoint)
    rows = json.loads((tmp_path / "p.json").read_text())["rows"]
    assert code == 0 and {(r["backend"], r["batch"]) for r in rows} == {(b, n) for b in ("ort-cpu", "torch") for n in (1, 4)}
    assert all(r["speedup_vs_torch"] > 0 for r in rows) and (tmp_path / "p.png").stat().st_size > 1000


def test_zoo_list_shows_metrics_of_trained_models(capsys, zoo_bundle) -> None:
    zoo_bundle("cnn")
    code, out, _ = run(capsys, "zoo", "list")
    assert code == 0 and "test_accuracy=0.9" in out and cached_checkpoint("cnn").is_file()


def test_processes_that_need_the_same_zoo_model_train_it_once(tmp_path: Path, monkeypatch) -> None:
    """`trained()` holds a lock per checkpoint: a second caller waits for the first one's checkpoint."""
    import threading
    import time

    from deploykit import models

    monkeypatch.setenv("DEPLOYKIT_HOME", str(tmp_path))
    runs = []

    def slow_train(name: str, out: Path, on_step: object = None) -> dict[str, float]:
        runs.append(name)
        time.sleep(0.3)  # the second caller arrives while this one trains
        return real_train(name, out, on_step)

    real_train = models.train_zoo
    monkeypatch.setattr(models, "train_zoo", slow_train)
    paths: list[Path] = []
    callers = [threading.Thread(target=lambda: paths.append(models.trained("hopfield-digits"))) for _ in range(2)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert runs == ["hopfield-digits"] and paths == [cached_checkpoint("hopfield-digits")] * 2
    assert sorted(p.name for p in (tmp_path / "zoo").iterdir()) == [".hopfield-digits.pt.lock", "hopfield-digits.pt"]


def test_run_command_and_its_input_errors(capsys, zoo_bundle, tmp_path: Path) -> None:
    bundle = zoo_bundle("cgan").path
    np.savez(tmp_path / "in.npz", z=np.zeros((3, 16), np.float32), label=np.array([1, 2, 3]))
    code, _, _ = run(capsys, "run", bundle, "--inputs", tmp_path / "in.npz", "--out", tmp_path / "out.npz")
    assert code == 0 and np.load(tmp_path / "out.npz")["image"].shape == (3, 1, 8, 8)
    np.savez(tmp_path / "bad.npz", z=np.zeros((3, 16), np.float32), label=np.array([1, 2, 30]))
    code, _, err = run(capsys, "run", bundle, "--inputs", tmp_path / "bad.npz", "--out", tmp_path / "o.npz")
    assert code == 2 and "input 'label' has values in [1, 30], expected integers in [0, 9]" in err
    np.savez(tmp_path / "nan.npz", z=np.full((1, 16), np.nan, np.float32), label=np.array([1]))
    code, _, err = run(capsys, "run", bundle, "--inputs", tmp_path / "nan.npz", "--out", tmp_path / "o.npz", "--check-finite")
    assert code == 2 and "'z' holds 16 NaN/Inf" in err


def test_user_model_from_factory(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    code, out, _ = run(capsys, "export", "examples.my_model:build_model", "--family", "cnn", "--out", tmp_path / "mine")
    assert code == 0
    code, out, _ = run(capsys, "verify", tmp_path / "mine", "--seed", "0")
    assert code == 0 and "deploykit does not import code or open files a bundle names" in out  # golden replay only
    code, out, _ = run(capsys, "verify", tmp_path / "mine", "--fresh", "--seed", "0",
                       "--source", "examples.my_model:build_model")
    assert code == 0 and "fresh model batch=7" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["export", "zoo:resnet", "--out", "{tmp}/x"], "unknown zoo model 'resnet'; choose one of 'mlp'"),
        (["export", "examples.my_model:build_model", "--family", "no-such-family", "--out", "{tmp}/x"], "unknown family 'no-such-family'"),
        (["export", "examples.my_model:build_model", "--out", "{tmp}/x"], "is a factory; say which family"),
        (["export", "no_such_pkg.mod:build", "--family", "cnn", "--out", "{tmp}/x"], "could not import module 'no_such_pkg.mod'"),
        (["export", "examples.my_model:nothing", "--family", "cnn", "--out", "{tmp}/x"], "has no callable 'nothing'"),
        (["export", "not/a/file.pt", "--out", "{tmp}/x"], "is not a zoo name, an existing checkpoint"),
        (["export", "examples.my_model:build_model", "--family", "cnn", "--out", "{tmp}"], "already exists; choose another --out or pass --force"),
        (["verify", "{tmp}/missing"], "does not exist or is not a directory"),
        (["sample", "{tmp}", "--out", "{tmp}/g.png"], "has no manifest.json"),
        (["verify", "{tiny}", "--fresh"], "cannot be rebuilt"),
        (["sample", "{tiny}", "--out", "{tmp}/g.png"], "has a 'classifier' loop, which can only run its graphs; this needs a bundle that can sample"),
        (["profile", "{tiny}", "--backend", "ort-cuda"], "needs CUDAExecutionProvider"),
        (["profile", "{tiny}", "--backend", "jax"], "unknown backend 'jax'"),
        (["export", "examples.my_model:build_model", "--family", "rnn", "--out", "{tmp}/x"],
         "Input x is [batch, time, rnn.input_size]"),  # [shapes] in messages are printed, not read as markup
    ],
)
def test_cli_errors_are_short_and_actionable(args, message, capsys, tmp_path, tiny_bundle_master, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    argv = [a.format(tmp=tmp_path, tiny=tiny_bundle_master) for a in args]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in " ".join(err.split())
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3


def test_export_and_quantize_report_their_phases_on_a_terminal_only(tiny_model, tmp_path: Path) -> None:
    """Piped (as here), export prints its one result line and no status line; given a callback, export names each
    phase as it starts (what the terminal's status line shows)."""
    import deploykit

    phases: list[str] = []
    deploykit.export(tiny_model, "mlp", tmp_path / "b", on_phase=phases.append)
    assert phases[0].startswith("tracing 'model'") and any("checking 'model' against torch" in p for p in phases)
    assert phases[-1] == "writing the bundle"
    run = subprocess.run([sys.executable, "-m", "deploykit", "export", "tests.conftest:TinyMLP", "--family", "mlp",
                          "--out", str(tmp_path / "c")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "tracing" not in run.stdout + run.stderr
