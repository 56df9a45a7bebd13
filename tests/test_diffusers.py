"""diffusers: every scheduler step against diffusers' own scheduler classes (same model output, same injected
noise), the Karras-style samplers against the formulas of Karras et al. 2022 and Lu et al. 2022 in float64, and
diffusers:DIR pipelines (tiny UNets from configs, saved with save_pretrained) sampled torch-free, host loop and
in-graph, against diffusers' loop over the torch UNet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import deploykit
from deploykit.errors import InputError
from deploykit.runtimes.diffusion import DiffusionOptions, draw_noise, scheduler_for
from deploykit.runtimes.schedulers import SCHEDULERS, make_scheduler
from deploykit.runtimes.schedulers.noise_schedule import alphas_cumprod, scheduler_config
from deploykit.sources import resolve

diffusers = pytest.importorskip("diffusers")
from deploykit.exporters.diffusers import reference_loop  # noqa: E402  (needs diffusers)

VP = ("ddpm", "ddim")
SIGMA = ("euler", "euler-a", "heun", "dpm++2m")


def toy_model(x: np.ndarray, t: float) -> np.ndarray:
    """A smooth stand-in for a network output, depending on its input and the timestep."""
    return (np.tanh(0.7 * x) * (1 + t / 700.0) + 0.1 * np.cos(x + t / 100.0)).astype(np.float32)


def _diffusers_run(name: str, config: dict, steps: int, start: np.ndarray, noise: np.ndarray, **options: object
                   ) -> np.ndarray:
    """diffusers' scheduler driven by toy_model, noise injected where it draws (the parity reference loop)."""
    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(toy_model(x.numpy(), float(t[0])))

    return reference_loop(model, name, steps, start, noise, scheduler_config=config, **options)


def _ours(name: str, config: dict, steps: int, start: np.ndarray, noise: np.ndarray, **options: object
          ) -> tuple[np.ndarray, object]:
    sched = make_scheduler(name, [name], scheduler_config(config), **options)
    sched.set_timesteps(steps)
    x = start * np.float32(sched.init_noise_sigma)
    for i, t in enumerate(sched.timesteps):
        x = sched.step(toy_model(sched.scale_model_input(x, i), t), i, x, noise[i])
    return x, sched


BASE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
CONFIGS = {  # well-conditioned for float32 diffusers: sigma_max stays below ~160 (see the float64 test below)
    "scaled_linear-eps-leading+1": BASE | {"timestep_spacing": "leading", "steps_offset": 1},
    "scaled_linear-v-trailing": BASE | {"prediction_type": "v_prediction", "timestep_spacing": "trailing",
                                        "set_alpha_to_one": False},
    "linear-x0-linspace-clip1.5": BASE | {"beta_schedule": "linear", "beta_start": 2e-4, "beta_end": 0.012,
                                          "prediction_type": "sample", "timestep_spacing": "linspace",
                                          "clip_sample": True, "clip_sample_range": 1.5},
    "cosine-eps-leading-noclip": BASE | {"beta_schedule": "squaredcos_cap_v2", "clip_sample": False,
                                         "timestep_spacing": "leading"},
    "trained_betas-v-linspace": {"num_train_timesteps": 400, "trained_betas": list(np.linspace(1e-4, 0.03, 400)),
                                 "prediction_type": "v_prediction",
                                 "timestep_spacing": "linspace", "clip_sample": False},
}
OPTIONS = {"ddpm": [{}], "ddim": [{"eta": 0.0}, {"eta": 0.7, "clipped_model_output": True}], "euler": [{}, {"karras": True}],
           "euler-a": [{}], "heun": [{}, {"karras": True}], "dpm++2m": [{}, {"karras": True}]}
# Left out: Euler ancestral with x0 prediction (diffusers: not implemented) and DPM-Solver++ with Karras sigmas on
# the cosine schedule (diffusers computes t = 998, 998, 998, ... in float32, and its index_for_timestep then
# starts at the second of the repeated timesteps, skipping a sigma); the float64 test below covers that case.
CASES = [(n, c, o) for n in SCHEDULERS if n != "langevin" for c in CONFIGS for o in OPTIONS[n]
         if not (n == "euler-a" and CONFIGS[c].get("prediction_type") == "sample")
         and not (n == "dpm++2m" and o and c.startswith("cosine"))]


@pytest.mark.parametrize(("name", "config", "options"), CASES, ids=lambda v: v if isinstance(v, str) else
                         "-".join(f"{k}={w}" for k, w in v.items()) or "default")
def test_scheduler_loops_match_diffusers(name: str, config: str, options: dict) -> None:
    """Whole 7- and 20-step loops: every step's update, timesteps, sigmas, offsets and the starting noise scale.
    diffusers computes alphas_cumprod in float32, deploykit in float64: near t = 0, 1 - abar then carries ~1e-4
    relative error in diffusers (its sigma_min), which the last step passes on. Measured: at most 5.5e-5 at scale 1
    (Heun, x0 prediction), where deploykit is within 7e-7 of the same loop in float64; held to 1e-4 of the scale."""
    rng = np.random.default_rng(0)
    for steps in (7, 20):
        start = rng.standard_normal((3, 2, 4)).astype(np.float32)
        noise = rng.standard_normal((2 * steps, 3, 2, 4)).astype(np.float32)
        expected = _diffusers_run(name, CONFIGS[config], steps, start, noise, **options)
        got, _ = _ours(name, CONFIGS[config], steps, start, noise, **options)
        np.testing.assert_allclose(got, expected, atol=1e-4 * max(1.0, np.abs(expected).max()))


def _karras(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    ramp = np.arange(n) / (n - 1)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


@pytest.mark.parametrize("name", SIGMA)
def test_karras_samplers_follow_the_papers_in_float64(name: str) -> None:
    """Karras et al. 2022 (eq. 5 sigmas; Algorithm 1 Heun, Algorithm 2 Euler without churn; k-diffusion's ancestral
    step) and Lu et al. 2022 (DPM-Solver++(2M), Algorithm 2) written out in float64 over the same Karras sigmas,
    on an eps model; cosine schedule from t = T - 1, where sigma_max is 2e4 and diffusers' float32 drifts
    (its Heun is 4e-4 relative off), so this is the reference there."""
    config = BASE | {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "linspace", "clip_sample": False}
    steps, rng = 8, np.random.default_rng(1)
    start = rng.standard_normal((2, 5)).astype(np.float32)
    noise = rng.standard_normal((2 * steps, 2, 5)).astype(np.float32)
    got, sched = _ours(name, config, steps, start, noise, karras=True)
    bar = alphas_cumprod(scheduler_config(config))
    table = np.sqrt((1 - bar) / bar)
    sig = np.append(_karras(table[0], table[-1], steps), 0.0)  # linspace: the extreme sigmas are t = 0 and T - 1
    times = sched.timesteps  # fractional (euler, heun) or rounded (dpm++2m) sigma -> t, as diffusers maps them

    def denoised(x: np.ndarray, i: int, sigma: float) -> np.ndarray:  # eps model on the VP input x / sqrt(sigma^2 + 1)
        return x - sigma * toy_model(x / np.sqrt(sigma**2 + 1), times[i]).astype(np.float64)

    x = start.astype(np.float64) * (sig[0] if name != "dpm++2m" else 1.0)
    if name == "dpm++2m":  # Lu et al.: in VE terms, x_ve = x_vp / alpha; D0 + (D0 - D_prev) / (2 r) between updates
        previous = None
        for i in range(steps):
            alpha_s, alpha_t = 1 / np.sqrt(sig[i] ** 2 + 1), 1 / np.sqrt(sig[i + 1] ** 2 + 1)
            d = denoised(x / alpha_s, i, sig[i])
            ratio = sig[i + 1] / sig[i]
            if previous is None or i == steps - 1:
                update = d
            else:
                r = np.log(sig[i - 1] / sig[i]) / np.log(sig[i] / sig[i + 1])
                update = d + (d - previous) / (2 * r)
            x = ratio * alpha_t / alpha_s * x + alpha_t * (1 - ratio) * update
            previous = d
    else:
        call = 0
        for i in range(steps):
            d1 = (x - denoised(x, call, sig[i])) / sig[i]
            if name == "euler-a":
                up = np.sqrt(sig[i + 1] ** 2 * (sig[i] ** 2 - sig[i + 1] ** 2) / sig[i] ** 2)
                down = np.sqrt(sig[i + 1] ** 2 - up**2)
                x = x + d1 * (down - sig[i]) + noise[call] * up
            elif name == "heun" and sig[i + 1] > 0:
                x_mid = x + d1 * (sig[i + 1] - sig[i])
                d2 = (x_mid - denoised(x_mid, call + 1, sig[i + 1])) / sig[i + 1]
                x = x + (d1 + d2) / 2 * (sig[i + 1] - sig[i])
                call += 1
            else:
                x = x + d1 * (sig[i + 1] - sig[i])
            call += 1
    np.testing.assert_allclose(got, x, atol=1e-4 * max(1.0, np.abs(x).max()))


def _save_pipeline(folder: Path, classes: int = 5, **scheduler: object) -> Path:
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, attention_head_dim=8, num_class_embeds=classes or None)
    config = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
              "prediction_type": "v_prediction", "timestep_spacing": "trailing", "clip_sample": False} | scheduler
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(**config)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(pipeline folder, bundle): a class-conditional v-prediction UNet2DModel with 4 classes + null label,
    exported by `deploykit export diffusers:DIR` as a user would."""
    root = tmp_path_factory.mktemp("diffusers")
    folder = _save_pipeline(root / "pipe")
    run = subprocess.run([sys.executable, "-m", "deploykit", "export", f"diffusers:{folder}", "--out", root / "bundle"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and f"exported diffusers:{folder} as 'ddpm'" in run.stdout, run.stderr
    return folder, root / "bundle"


LOOPS = [("ddpm", 25, {}), ("ddim", 20, {}), ("ddim", 20, {"eta": 0.6}), ("euler", 20, {}), ("euler", 20, {"karras": True}),
         ("euler-a", 20, {}), ("heun", 10, {}), ("heun", 10, {"karras": True}), ("dpm++2m", 20, {}),
         ("dpm++2m", 20, {"karras": True})]


def test_pipeline_loops_match_diffusers_host_and_in_graph(pipeline) -> None:
    """Every sampler at guidance 7.5 on the exported UNet (ORT), host loop and in-graph, against diffusers' own
    scheduler over the torch UNet with the same noise. Measured: at most 4.2e-5 (Euler with Karras sigmas, whose
    fractional timesteps diffusers computes in float32) at |x| ~ 6; held to 1e-4."""
    folder, bundle = pipeline
    model = resolve(f"diffusers:{folder}").model
    labels = np.array([0, 1, 2, 3])
    with deploykit.load(bundle) as dep:
        loop = dep.bundle.loop
        assert loop.schedulers[0] == "ddpm" and loop.num_classes == 4 and loop.schedule["prediction_type"] == "v_prediction"
        assert dep.bundle.graphs["denoiser"].spec.output_names() == ["v"]
        for name, steps, extra in LOOPS:
            options = DiffusionOptions(labels=labels, steps=steps, scheduler=name, guidance=7.5, **extra)
            sched = scheduler_for(loop, options)
            start, noise = draw_noise(loop.event_shape, sched, 4, 3)
            expected = reference_loop(model, name, steps, start / np.float32(sched.init_noise_sigma), noise, labels,
                                      7.5, **extra)
            for host in (True, False):
                got = dep.sample(4, 3, dep.options(labels=labels, steps=steps, scheduler=name, guidance=7.5,
                                                   host=host, **extra))
                np.testing.assert_allclose(got, expected, atol=1e-4, err_msg=f"{name} {extra} host={host}")


def test_verify_against_the_pipeline_folder(pipeline, verifies_against) -> None:
    folder, bundle = pipeline
    verifies_against(f"diffusers:{folder}", bundle)


def test_exported_folder_samples_dpm_solver_torch_free(pipeline, tmp_path: Path) -> None:
    _, bundle = pipeline
    shadow = tmp_path / "shadow"
    (shadow / "torch").mkdir(parents=True)
    (shadow / "torch" / "__init__.py").write_text("raise ImportError('torch is not installed (test shadow)')\n")
    env = dict(os.environ, PYTHONPATH=str(shadow))
    sample = [sys.executable, "-m", "deploykit", "sample", bundle, "--n", "6", "--scheduler", "dpm++2m",
              "--steps", "20", "--guidance", "7.5", "--karras"]
    run = subprocess.run([*sample, "--out", tmp_path / "s.npy"], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert np.load(tmp_path / "s.npy").shape == (6, 1, 8, 8)
    bad = subprocess.run([*sample[:-1], "--guidance", "-2", "--out", tmp_path / "t.npy"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "--guidance is -2.0, expected a finite scale >= 0" in bad.stderr


def test_pipeline_folder_errors(pipeline, tmp_path: Path) -> None:
    folder, _ = pipeline
    with pytest.raises(InputError, match="no unet/config.json there; give a pipeline folder"):
        resolve(f"diffusers:{folder / 'unet'}")
    with pytest.raises(InputError, match=r"exports diffusion and text-to-image pipelines as family \('ddpm', 'text-to-image'\), not 'gpt'"):
        resolve(f"diffusers:{folder}", "gpt")
    cross = tmp_path / "cross"
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=8, cross_attention_dim=16, attention_head_dim=8)
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()).save_pretrained(cross)
    with pytest.raises(InputError, match="cross-attention blocks, which need a text encoder"):
        resolve(f"diffusers:{cross}")
    thresholded = _save_pipeline(tmp_path / "thr", thresholding=True)
    with pytest.raises(InputError, match="thresholding=True: dynamic thresholding takes a per-sample quantile"):
        resolve(f"diffusers:{thresholded}")  # before the UNet loads
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert config["_class_name"] == "DDPMScheduler"
    transformers = pytest.importorskip("transformers")
    for model, route in ((unet, "diffusers:DIR"), (transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_embd=8, n_layer=1, n_head=2, vocab_size=20)), "hf:DIR")):  # passed as the library holds them
        with pytest.raises(InputError, match=f"is a .* model: deploykit exports those .*`deploykit export {route}"):
            deploykit.export(model, "ddpm" if route.startswith("diffusers") else "gpt", tmp_path / "raw")
        assert not (tmp_path / "raw").exists()


def test_class_conditional_unet2d_condition_model_exports_with_class_labels(tmp_path: Path) -> None:
    """A UNet2DConditionModel without cross-attention, conditioned by class embeddings, under Euler's default."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        mid_block_type=None, norm_num_groups=8, num_class_embeds=3)
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.EulerDiscreteScheduler()).save_pretrained(tmp_path / "p")
    resolved = resolve(f"diffusers:{tmp_path / 'p'}")
    bundle = deploykit.export(resolved.model, resolved.family, tmp_path / "b", source=resolved.source)
    labels = np.array([0, 1])
    with deploykit.load(bundle.path) as dep:
        assert dep.bundle.loop.schedulers[0] == "euler"
        sched = scheduler_for(dep.bundle.loop, DiffusionOptions(labels=labels, steps=12, guidance=5.0))
        start, noise = draw_noise(dep.bundle.loop.event_shape, sched, 2, 0)
        got = dep.sample(2, 0, dep.options(labels=labels, steps=12, guidance=5.0))
    expected = reference_loop(resolved.model, "euler", 12, start / np.float32(sched.init_noise_sigma), noise, labels, 5.0)
    # untrained UNet, guidance 5, sigma_max 157: samples reach |x| ~ 400; measured 3.4e-4 there (8e-7 relative)
    np.testing.assert_allclose(got, expected, atol=2e-6 * max(50.0, np.abs(expected).max()))


@pytest.mark.slow  # the default suite keeps test_every_reproduced_default_config_sets_up_every_sampler
def test_dpm_solver_default_config_exports_and_matches_diffusers(tmp_path: Path) -> None:
    """DPMSolverMultistepScheduler() as save_pretrained writes it (variance_type null: no variance channels, not a
    learned variance) exports with DPM-Solver++(2M) first and samples like diffusers' own loop."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8)
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DPMSolverMultistepScheduler()).save_pretrained(tmp_path / "p")
    assert json.loads((tmp_path / "p" / "scheduler" / "scheduler_config.json").read_text())["variance_type"] is None
    resolved = resolve(f"diffusers:{tmp_path / 'p'}")
    bundle = deploykit.export(resolved.model, resolved.family, tmp_path / "b", source=resolved.source)
    with deploykit.load(bundle.path) as dep:
        assert dep.bundle.loop.schedulers[0] == "dpm++2m"
        sched = scheduler_for(dep.bundle.loop, DiffusionOptions(steps=12))
        start, noise = draw_noise(dep.bundle.loop.event_shape, sched, 2, 0)
        got = dep.sample(2, 0, dep.options(steps=12))
    expected = reference_loop(resolved.model, "dpm++2m", 12, start / np.float32(sched.init_noise_sigma), noise)
    np.testing.assert_allclose(got, expected, atol=2e-6 * max(50.0, np.abs(expected).max()))


def _shipped_schedulers() -> list[str]:
    return sorted(n for n in dir(diffusers) if n.endswith("Scheduler") and not n.startswith("Flax")
                  and isinstance(getattr(diffusers, n, None), type))


def _default_config(name: str) -> dict:
    """The config `save_pretrained` writes for diffusers' scheduler class `name` (its class name alone where the
    class cannot be built here: it needs torchsde, or arguments without defaults)."""
    try:
        return dict(getattr(diffusers, name)().config) | {"_class_name": name}
    except Exception:  # noqa: BLE001  (optional dependency or required argument: the class name is what matters)
        return {"_class_name": name}


@pytest.mark.parametrize("name", sorted(cls.diffusers_class for cls in SCHEDULERS.values() if cls.diffusers_class))
def test_every_reproduced_default_config_sets_up_every_sampler(name: str) -> None:
    """A bundle offers every sampler from its folder's scheduler config: each must set up from the config each
    reproduced class saves by default (DPMSolverMultistepScheduler's variance_type null once made DDPM refuse it as a
    learned variance, so the folder did not export)."""
    config = scheduler_config(_default_config(name))
    for sampler in SCHEDULERS:
        if sampler != "langevin":
            make_scheduler(sampler, [sampler], config).set_timesteps(SCHEDULERS[sampler].short_steps)


@pytest.mark.parametrize("name", _shipped_schedulers())
def test_every_shipped_scheduler_is_reproduced_or_refused_by_name(name: str, pipeline, tmp_path: Path) -> None:
    """The README's scheduler table: each scheduler class diffusers ships, with its default config, either becomes
    the bundle's first sampler and matches diffusers' own class (7 and 20 steps on the stand-in model), or the
    folder is refused before the UNet loads, naming the class. A sampler is never guessed (EDM, consistency or
    inverse schedulers exported as DDPM would verify green and sample the wrong model)."""
    config = _default_config(name)
    taken = {cls.diffusers_class: n for n, cls in SCHEDULERS.items() if cls.diffusers_class}
    if name in taken:
        rng = np.random.default_rng(0)
        for steps in (7, 20):
            start = rng.standard_normal((3, 2, 4)).astype(np.float32)
            noise = rng.standard_normal((2 * steps, 3, 2, 4)).astype(np.float32)
            expected = _diffusers_run(taken[name], config, steps, start, noise)
            got, _ = _ours(taken[name], config, steps, start, noise)
            np.testing.assert_allclose(got, expected, atol=1e-4 * max(1.0, np.abs(expected).max()))
        return
    folder, _ = pipeline
    copy = tmp_path / "pipe"
    (copy / "scheduler").mkdir(parents=True)
    (copy / "unet").symlink_to(folder / "unet")
    (copy / "scheduler" / "scheduler_config.json").write_text(json.dumps(config, default=str))
    with pytest.raises(InputError, match=f"the scheduler config is a {name}: .*swap the pipeline's scheduler"):
        resolve(f"diffusers:{copy}")
