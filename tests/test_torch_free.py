"""The runtime side works in a process where `import torch` fails: verify (golden), sample, inspect, profile, run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np


def deploykit(env: dict[str, str], *args: object) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "deploykit", *map(str, args)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_torch_really_is_absent(no_torch_env: dict[str, str]) -> None:
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=no_torch_env, capture_output=True, text=True)
    assert probe.returncode != 0 and "torch is not installed" in probe.stderr


def test_verify_sample_inspect_profile_run_without_torch(no_torch_env, zoo_bundle, tmp_path: Path) -> None:
    gan = zoo_bundle("cgan").path
    unet = zoo_bundle("unet").path
    verified = deploykit(no_torch_env, "verify", unet)
    assert verified.returncode == 0, verified.stderr
    assert "PASS" in verified.stdout and "fresh inputs: skipped (this needs torch" in verified.stdout
    assert "golden model batch=2,height=16,width=12" in verified.stdout
    sampled = deploykit(no_torch_env, "sample", gan, "--n", "16", "--seed", "1", "--out", tmp_path / "g.npy")
    assert sampled.returncode == 0, sampled.stderr
    assert np.load(tmp_path / "g.npy").shape == (16, 1, 8, 8)
    assert deploykit(no_torch_env, "inspect", gan).returncode == 0
    prof = deploykit(no_torch_env, "profile", gan, "--backend", "ort-cpu", "--iterations", "3", "--batch", "2")
    assert prof.returncode == 0 and "ort-cpu" in prof.stdout
    np.savez(tmp_path / "in.npz", z=np.zeros((2, 16), np.float32), label=np.array([3, 4]))
    ran = deploykit(no_torch_env, "run", gan, "--inputs", tmp_path / "in.npz", "--out", tmp_path / "out.npz")
    assert ran.returncode == 0, ran.stderr
    assert np.load(tmp_path / "out.npz")["image"].shape == (2, 1, 8, 8)
    needs_torch = deploykit(no_torch_env, "verify", gan, "--fresh")
    assert needs_torch.returncode == 2 and "this needs torch" in needs_torch.stderr
    assert "Traceback" not in needs_torch.stderr


def test_golden_verify_fails_when_outputs_differ_without_torch(no_torch_env, zoo_bundle, tmp_path: Path) -> None:
    import json
    import shutil

    from deploykit.bundle import save_golden, sha256_file

    bundle = Path(shutil.copytree(zoo_bundle("dcgan").path, tmp_path / "b"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    case = manifest["golden"][0]
    with np.load(bundle / case["file"]) as data:
        inputs = {"z": data["in.z"]}
        outputs = {"image": data["out.image"] + np.float32(1e-3)}  # a deployment off by 1e-3 must fail
    save_golden(bundle / case["file"], inputs, outputs)
    case["sha256"] = sha256_file(bundle / case["file"])
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    result = deploykit(no_torch_env, "verify", bundle, "--json", tmp_path / "r.json")
    assert result.returncode == 1 and "FAIL" in result.stdout
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [r["passed"] for r in rows] == [False, True, True]  # tampered case, other golden case, loop run
    assert abs(rows[0]["max_abs"] - 1e-3) < 1e-5


def test_recurrent_sample_and_golden_verify_without_torch(no_torch_env, zoo_bundle, tmp_path: Path) -> None:
    lm, s2s, vrnn = (zoo_bundle(n).path for n in ("char-lm", "seq2seq", "vrnn"))
    verified = deploykit(no_torch_env, "verify", lm)
    assert verified.returncode == 0, verified.stderr
    assert "golden loop seed=0" in verified.stdout and "golden chunk batch=5,time=500" in verified.stdout
    text = deploykit(no_torch_env, "sample", lm, "--prompt", "Beautiful", "--mode", "greedy", "--max-new-tokens", "30",
                     "--out", tmp_path / "lm.txt")
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("Beautiful") and (tmp_path / "lm.txt").read_text().startswith("Beautiful")
    decoded = deploykit(no_torch_env, "sample", s2s, "--prompt", "12345", "--beam", "3")
    assert decoded.returncode == 0 and "12345 -> 54321" in decoded.stdout, decoded.stdout + decoded.stderr
    traj = deploykit(no_torch_env, "sample", vrnn, "--n", "5", "--steps", "30", "--out", tmp_path / "t.npy")
    assert traj.returncode == 0, traj.stderr
    assert np.load(tmp_path / "t.npy").shape == (5, 30, 2)
    bad = deploykit(no_torch_env, "sample", lm, "--prompt", "naïve")
    assert bad.returncode == 2 and "character 'ï' at position 2" in bad.stderr and "Traceback" not in bad.stderr


def test_transformer_sample_and_golden_verify_without_torch(no_torch_env, zoo_bundle) -> None:
    gpt, t2t = zoo_bundle("gpt").path, zoo_bundle("transformer-seq2seq").path
    verified = deploykit(no_torch_env, "verify", gpt)
    assert verified.returncode == 0 and "golden loop seed=0" in verified.stdout, verified.stdout + verified.stderr
    text = deploykit(no_torch_env, "sample", gpt, "--prompt", "Now is", "--prompt", "Beautiful", "--max-new-tokens", "20")
    assert text.returncode == 0 and text.stdout.startswith("Now is"), text.stderr
    decoded = deploykit(no_torch_env, "sample", t2t, "--prompt", "2718281", "--beam", "4")
    assert decoded.returncode == 0 and "2718281 -> 1828172" in decoded.stdout, decoded.stdout + decoded.stderr
    too_long = deploykit(no_torch_env, "sample", gpt, "--prompt", "a" * 700)
    assert too_long.returncode == 2 and "more than the model's context of 640" in too_long.stderr


def test_quantize_and_verify_without_torch(no_torch_env, zoo_bundle, tmp_path: Path) -> None:
    made = deploykit(no_torch_env, "quantize", zoo_bundle("vit").path, "--mode", "int8-dynamic", "--out", tmp_path / "q")
    assert made.returncode == 0 and "wrote int8-dynamic bundle" in made.stdout, made.stderr
    verified = deploykit(no_torch_env, "verify", tmp_path / "q")
    assert verified.returncode == 0 and "top-1 agrees" in verified.stdout, verified.stdout + verified.stderr


def test_masked_autoregressive_sample_and_golden_verify_without_torch(no_torch_env, zoo_bundle, tmp_path: Path) -> None:
    import wave

    from PIL import Image

    made, pixelcnn, wavenet = (zoo_bundle(n).path for n in ("made", "pixelcnn", "wavenet"))
    for bundle in (made, pixelcnn, wavenet):
        verified = deploykit(no_torch_env, "verify", bundle)
        assert verified.returncode == 0 and "golden loop seed=0" in verified.stdout, verified.stdout + verified.stderr
    grid = deploykit(no_torch_env, "sample", made, "--n", "16", "--ordering", "2", "--out", tmp_path / "made.png")
    assert grid.returncode == 0 and "wrote 16 samples [64]" in grid.stdout, grid.stderr
    assert Image.open(tmp_path / "made.png").size == (4 * 37, 4 * 37)  # 4x4 tiles of 8 px + 1 px gaps, scaled 4x
    digits = deploykit(no_torch_env, "sample", pixelcnn, "--n", "10", "--label", "7", "--out", tmp_path / "p.npy")
    assert digits.returncode == 0, digits.stderr
    images = np.load(tmp_path / "p.npy")
    assert images.shape == (10, 1, 8, 8) and images.dtype == np.int64 and images.max() <= 3
    audio = deploykit(no_torch_env, "sample", wavenet, "--n", "2", "--steps", "800", "--label", "1", "--out", tmp_path / "a.wav")
    assert audio.returncode == 0, audio.stderr
    with wave.open(str(tmp_path / "a.wav")) as clip:
        assert clip.getframerate() == 8000 and clip.getnframes() == 2 * (800 + 800)  # each clip plus 0.1 s of silence
    bad = deploykit(no_torch_env, "sample", pixelcnn, "--label", "10", "--out", tmp_path / "x.png")
    assert bad.returncode == 2 and "label" in bad.stderr and "Traceback" not in bad.stderr
    naive_elsewhere = deploykit(no_torch_env, "sample", made, "--naive", "--out", tmp_path / "x.png")
    assert naive_elsewhere.returncode == 2 and "--naive is for WaveNet" in naive_elsewhere.stderr


def test_flow_sample_and_golden_verify_without_torch(no_torch_env, zoo_bundle, tmp_path: Path) -> None:
    from PIL import Image

    glow, maf = zoo_bundle("glow-digits").path, zoo_bundle("maf-moons").path
    for bundle in (glow, maf):
        verified = deploykit(no_torch_env, "verify", bundle)
        assert verified.returncode == 0 and "golden loop seed=0" in verified.stdout, verified.stdout + verified.stderr
    grid = deploykit(no_torch_env, "sample", glow, "--n", "16", "--temperature", "0.7", "--size", "16x12", "--out", tmp_path / "g.png")
    assert grid.returncode == 0 and "wrote 16 samples [1, 16, 12]" in grid.stdout, grid.stderr
    assert Image.open(tmp_path / "g.png").size == (4 * (4 * 13 + 1), 4 * (4 * 17 + 1))
    plot = deploykit(no_torch_env, "sample", maf, "--n", "500", "--host-loop", "--out", tmp_path / "m.png")
    assert plot.returncode == 0, plot.stderr
    assert Image.open(tmp_path / "m.png").size == (480, 480)
    points = deploykit(no_torch_env, "sample", maf, "--n", "7", "--out", tmp_path / "m.npy")
    assert points.returncode == 0 and np.load(tmp_path / "m.npy").shape == (7, 2)
    cold = deploykit(no_torch_env, "sample", glow, "--temperature", "0", "--out", tmp_path / "x.png")
    assert cold.returncode == 2 and "--temperature is 0.0, expected a number > 0" in cold.stderr and "Traceback" not in cold.stderr
    odd = deploykit(no_torch_env, "sample", glow, "--size", "10x8", "--out", tmp_path / "x.png")
    assert odd.returncode == 2 and "multiples of 4" in odd.stderr


def test_diffusion_vae_energy_sample_and_golden_verify_without_torch(no_torch_env, zoo_bundle, tmp_path: Path) -> None:
    from PIL import Image

    ddpm, ldm, cvae, rbm, hop = (zoo_bundle(n).path for n in
                                 ("ddpm-digits", "latent-diffusion-digits", "cvae-digits", "rbm-digits", "hopfield-digits"))
    for bundle in (ddpm, rbm):
        verified = deploykit(no_torch_env, "verify", bundle)
        assert verified.returncode == 0 and "golden loop seed=0" in verified.stdout, verified.stdout + verified.stderr
    guided = deploykit(no_torch_env, "sample", ddpm, "--n", "20", "--scheduler", "ddim", "--steps", "25", "--guidance", "3",
                       "--host-loop", "--out", tmp_path / "d.png")
    assert guided.returncode == 0 and "wrote 20 samples [1, 8, 8]" in guided.stdout, guided.stderr
    assert Image.open(tmp_path / "d.png").size == (4 * (5 * 9 + 1), 4 * (4 * 9 + 1))
    for bundle, extra in ((ldm, ["--scheduler", "ddim"]), (cvae, ["--interpolate", "--label", "4"]), (hop, [])):
        done = deploykit(no_torch_env, "sample", bundle, "--n", "9", *extra, "--out", tmp_path / "s.png")
        assert done.returncode == 0 and "wrote 9 samples [64]" in done.stdout, done.stderr
    for bundle, args, message in [
        (ddpm, ["--steps", "5000"], "trained with 1000 diffusion steps"),
        (ldm, ["--guidance", "2"], "--guidance needs a class-conditional model"),
    ]:
        bad = deploykit(no_torch_env, "sample", bundle, *args, "--out", tmp_path / "x.png")
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
