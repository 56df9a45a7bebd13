"""diffusers:DIR text-to-image pipelines: a tiny StableDiffusionPipeline built from configs (CLIP tokenizer as SD 1.x
folders carry it: vocab.json + merges.txt, no tokenizer.json; SD 1.5's scheduler settings), exported once through
the CLI, sampled torch-free from prompts, and matched against diffusers' own StableDiffusionPipeline with the same
latents (and the same injected noise where a sampler draws)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

import deploykit
from deploykit.errors import InputError
from deploykit.runtimes.diffusion import draw_noise, scheduler_for
from deploykit.sources import resolve

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

WORDS = ("a", "photo", "of", "cat", "dog", "red", "blue", "the", "an", "astronaut", "riding", "horse", "on", "mars")
PROMPTS = ["a photo of a cat", "an astronaut riding a horse on mars"]
NEGATIVE = ["blue", "the red dog"]
SD15_SCHEDULE = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1,
                 "set_alpha_to_one": False, "clip_sample": False}  # SD 1.x's scheduler config


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's byte -> printable character table."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in keep]
    return [chr(c) for c in keep] + [chr(256 + i) for i in range(len(extra))]


def clip_tokenizer_files(folder: Path) -> int:
    """A small CLIP BPE vocabulary (bytes, bytes + </w>, merges spelling WORDS, the two special tokens) written as SD
    1.x folders carry it; returns the vocabulary size."""
    chars = _bytes_to_unicode()
    vocab, merges = chars + [c + "</w>" for c in chars], []
    for word in WORDS:
        done = word[0]
        for i, ch in enumerate(word[1:], 1):
            piece = ch + ("</w>" if i == len(word) - 1 else "")
            merges.append(f"{done} {piece}")
            done += piece
            vocab += [] if done in vocab else [done]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    (folder / "tokenizer_config.json").write_text(json.dumps(special | {
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, "errors": "replace"}))
    return len(vocab)


def save_pipeline(folder: Path, scheduler: object = None, **unet: object) -> Path:
    """A tiny StableDiffusionPipeline (random init, 16x16 images from 4x8x8 latents) saved as SD 1.x folders are."""
    torch.manual_seed(0)
    size = clip_tokenizer_files(folder / "tokenizer")
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=size, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=size - 2, eos_token_id=size - 1, pad_token_id=size - 1))
    net = diffusers.UNet2DConditionModel(**{
        "sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 1, "block_out_channels": (16, 32),
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"), "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": 32, "attention_head_dim": 4, "norm_num_groups": 8} | unet)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32),
                                  latent_channels=4, norm_num_groups=8, sample_size=16, scaling_factor=0.18215)
    tokenizer = transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer")
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=tokenizer, unet=net,
        scheduler=scheduler or diffusers.DDIMScheduler(**SD15_SCHEDULE), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.save_pretrained(folder)
    for name in ("tokenizer.json", "added_tokens.json"):  # as SD 1.x: vocab.json + merges.txt alone
        (folder / "tokenizer" / name).unlink(missing_ok=True)
    clip_tokenizer_files(folder / "tokenizer")
    return folder


@pytest.fixture(scope="module")
def sd(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(pipeline folder, bundle) exported as the CLI does (sources.resolve, then export with the built tokenizer; the
    CLI's own export of diffusers:DIR is tests/test_diffusers.py's fixture)."""
    root = tmp_path_factory.mktemp("sd")
    folder = save_pipeline(root / "pipe")
    resolved = resolve(f"diffusers:{folder}")
    assert resolved.family == "text-to-image"
    deploykit.export(resolved.model, resolved.family, root / "bundle", source=resolved.source,
                     tokenizer=resolved.tokenizer)
    return folder, root / "bundle"


def test_tokenizer_json_built_from_vocab_and_merges_encodes_as_clip_tokenizer(sd) -> None:
    folder, bundle = sd
    assert not (folder / "tokenizer" / "tokenizer.json").exists()
    clip = transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer")
    texts = [*PROMPTS, "", "A   RED dog, on MARS!!", "astronaut " * 60, "héllo wörld ☃ 42", "the\ncat\tdog"]
    with deploykit.load(bundle) as dep:
        codec = dep.codec()
        for text in texts:
            expected = clip(text, padding="max_length", max_length=clip.model_max_length, truncation=True).input_ids
            assert codec.encode(text, special=True).tolist() == expected, text
    assert len(expected) == 77


CLASSES = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler", "euler-a": "EulerAncestralDiscreteScheduler",
           "dpm++2m": "DPMSolverMultistepScheduler", "heun": "HeunDiscreteScheduler", "ddpm": "DDPMScheduler"}


@contextmanager
def injected(modules: list, draws: list[np.ndarray]) -> Iterator[None]:
    """diffusers' randn_tensor in `modules` (those that draw) returns draws[k] at its k-th call."""
    stream = iter(draws)
    with ExitStack() as stack:
        for module in modules:
            if hasattr(module, "randn_tensor"):
                stack.enter_context(mock.patch.object(module, "randn_tensor",
                                                      lambda *a, **k: torch.from_numpy(next(stream))))
        yield


def _pipeline_run(pipe: object, name: str, latents: np.ndarray, noise: np.ndarray, guidance: float, steps: int
                  ) -> np.ndarray:
    """diffusers' StableDiffusionPipeline with `latents` and, where its scheduler draws, noise[k] at its k-th draw."""
    pipe.scheduler = getattr(diffusers, CLASSES[name]).from_config(pipe.scheduler.config)
    with injected([sys.modules[type(pipe.scheduler).__module__]], list(noise)):
        images = pipe(PROMPTS, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=guidance,
                      latents=torch.from_numpy(latents), output_type="np").images
    return images.transpose(0, 3, 1, 2)


TOLERANCE = 1e-5  # images in [0, 1]; see the test below


def test_whole_run_matches_stable_diffusion_pipeline(sd) -> None:
    """The same latents and noise through diffusers' StableDiffusionPipeline (torch) and the bundle (ORT): images within
    1e-5 for DDIM, Euler, DPM-Solver++(2M) and Euler ancestral at guidance 7.5, and for DDIM at guidance 1 (prompt
    alone). Measured: at most 9.5e-7 (float32 rounding through 12 steps). The samplers' own images differ from each
    other by 8.3e-4 (DDIM against Euler, the same solver on the same timesteps: SD 1.x's set_alpha_to_one=False stops
    DDIM short of sigma 0) to 8e-2, 50x the tolerance or more, so the tolerance tells them apart."""
    folder, bundle = sd
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    images = {}
    with deploykit.load(bundle) as dep:
        loop = dep.bundle.loop
        assert loop.schedulers[0] == "ddim" and loop.tokens == 77 and loop.scaling_factor == pytest.approx(0.18215)
        for name, guidance in (("ddim", 7.5), ("euler", 7.5), ("dpm++2m", 7.5), ("euler-a", 7.5), ("ddim", 1.0)):
            options = dep.options(prompts=PROMPTS, negative_prompts=NEGATIVE, steps=12, scheduler=name,
                                  guidance=guidance)
            start, noise = draw_noise(loop.latent_shape, scheduler_for(loop, options), 2, 5)
            latents = start / np.float32(scheduler_for(loop, options).init_noise_sigma)
            got = dep.sample(2, 5, options)
            expected = _pipeline_run(pipe, name, latents, noise, guidance, 12)
            assert got.shape == (2, 3, 16, 16) and got.dtype == np.float32
            np.testing.assert_allclose(got, expected, atol=TOLERANCE, err_msg=f"{name} w={guidance}")
            again = dep.sample(2, 99, dep.options(prompts=PROMPTS, negative_prompts=NEGATIVE, steps=12, scheduler=name,
                                                  guidance=guidance, latents=latents))
            if name != "euler-a":  # deterministic: the given latents decide the image, not the seed
                np.testing.assert_array_equal(again, got)
            images[name, guidance] = got
    samplers = [images[k] for k in (("ddim", 7.5), ("euler", 7.5), ("dpm++2m", 7.5), ("ddim", 1.0))]
    gaps = [np.abs(a - b).max() for i, a in enumerate(samplers) for b in samplers[i + 1:]]
    assert min(gaps) > 50 * TOLERANCE, gaps


def test_image_to_image_matches_the_img2img_pipeline(sd) -> None:
    """Init images through the bundle's VAE encoder, noised to where the last `strength` of the steps begins, against
    diffusers' StableDiffusionImg2ImgPipeline with the same draws (the encoder's latent sample, the added noise, each
    step's): within TOLERANCE for first- and second-order, multistep and ancestral samplers. Measured: at most 1.1e-6."""
    folder, bundle = sd
    pipe = diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(folder, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    images = np.random.default_rng(7).uniform(0, 1, (2, 3, 16, 16)).astype(np.float32)
    modules = [sys.modules[type(pipe).__module__], sys.modules[diffusers.models.autoencoders.vae.__name__]]
    outputs = {}
    with deploykit.load(bundle) as dep:
        loop = dep.bundle.loop
        assert loop.image_shape == [3, 16, 16]
        for name, strength in (("ddim", 0.8), ("euler", 0.6), ("dpm++2m", 0.8), ("euler-a", 0.8), ("heun", 0.5),
                               ("ddpm", 1.0)):
            options = dep.options(prompts=PROMPTS, negative_prompts=NEGATIVE, steps=12, scheduler=name,
                                  init_images=images, strength=strength)
            got = dep.sample(2, 4, options)
            scheduler = scheduler_for(loop, options)
            scheduler.start_at(12, strength)
            rng = np.random.default_rng(4)
            draws = [rng.standard_normal((2, *loop.latent_shape), dtype=np.float32) for _ in range(2)]
            draws += list(rng.standard_normal((len(scheduler.timesteps), 2, *loop.latent_shape), dtype=np.float32))
            pipe.scheduler = getattr(diffusers, CLASSES[name]).from_config(pipe.scheduler.config)
            with injected([*modules, sys.modules[type(pipe.scheduler).__module__]], draws):
                expected = pipe(PROMPTS, image=torch.from_numpy(images), negative_prompt=NEGATIVE, strength=strength,
                                num_inference_steps=12, guidance_scale=7.5, output_type="np").images.transpose(0, 3, 1, 2)
            np.testing.assert_allclose(got, expected, atol=TOLERANCE, err_msg=f"{name} strength={strength}")
            outputs[name] = got
        with pytest.raises(InputError, match=r"--strength 0.05 with 12 steps runs no step"):
            dep.sample(1, 0, dep.options(prompts=PROMPTS, steps=12, init_images=images, strength=0.05))
        with pytest.raises(InputError, match=r"--strength is for image-to-image"):
            dep.sample(1, 0, dep.options(prompts=PROMPTS, steps=12, strength=0.5))
        with pytest.raises(InputError, match=r"--init-image has shape \[2, 3, 8, 8\]"):
            dep.sample(1, 0, dep.options(prompts=PROMPTS, steps=12, init_images=images[:, :, :8, :8]))
    assert min(np.abs(a - b).max() for a, b in zip(outputs.values(), list(outputs.values())[1:])) > 50 * TOLERANCE


def test_sample_cli_writes_a_png_torch_free(sd, no_torch_env: dict[str, str], tmp_path: Path) -> None:
    _, bundle = sd
    env = no_torch_env
    base = [sys.executable, "-m", "deploykit", "sample", bundle, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1],
            "--negative-prompt", "blue", "--steps", "4", "--guidance", "7.5", "--scheduler", "dpm++2m"]
    run = subprocess.run([*base, "--out", tmp_path / "grid.png"], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "wrote 2 samples [3, 16, 16]" in run.stdout
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    npy = subprocess.run([*base, "--n", "3", "--out", tmp_path / "x.npy"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert npy.returncode == 0, npy.stderr
    images = np.load(tmp_path / "x.npy")
    assert images.shape == (3, 3, 16, 16) and images.min() >= 0 and images.max() <= 1
    painted = subprocess.run([*base, "--init-image", tmp_path / "grid.png", "--strength", "0.5", "--out",
                              tmp_path / "i2i.npy"], env=env, capture_output=True, text=True, timeout=300)
    assert painted.returncode == 0, painted.stderr  # the grid (2 images, enlarged) resized to 16x16 with Lanczos
    assert np.load(tmp_path / "i2i.npy").shape == (2, 3, 16, 16)
    (tmp_path / "not.png").write_text("text")
    unreadable = subprocess.run([*base, "--init-image", tmp_path / "not.png", "--out", tmp_path / "u.png"], env=env,
                                capture_output=True, text=True, timeout=300)
    assert unreadable.returncode == 2 and "not.png: not an image Pillow can read" in unreadable.stderr
    no_prompt = subprocess.run([*base[:5], "--out", tmp_path / "y.png"], env=env, capture_output=True, text=True,
                               timeout=300)
    assert no_prompt.returncode == 2 and "draws from prompts: give --prompt TEXT" in no_prompt.stderr
    wrong = subprocess.run([*base, "--label", "3", "--out", tmp_path / "z.png"], env=env, capture_output=True, text=True,
                           timeout=300)
    assert wrong.returncode == 2 and "--label is for" in wrong.stderr


def test_verify_against_the_pipeline_folder(sd, verifies_against) -> None:
    folder, bundle = sd
    verifies_against(f"diffusers:{folder}", bundle)


def test_unsupported_pipelines_are_refused_by_name(sd, tmp_path: Path) -> None:
    folder, _ = sd
    sdxl_like = save_pipeline(tmp_path / "added", addition_embed_type="text", addition_embed_type_num_heads=4)
    with pytest.raises(InputError, match="addition_embed_type='text'.*does not feed"):
        resolve(f"diffusers:{sdxl_like}")
    pndm = save_pipeline(tmp_path / "pndm", diffusers.PNDMScheduler(**{k: v for k, v in SD15_SCHEDULE.items() if k != "clip_sample"},
                                                                      skip_prk_steps=True))
    with pytest.raises(InputError, match="PNDMScheduler: PLMS combines the last four predictions.*swap the pipeline"):
        resolve(f"diffusers:{pndm}")
    index = json.loads((folder / "model_index.json").read_text())
    other = tmp_path / "other"
    other.mkdir()
    (other / "text_encoder").mkdir()
    (other / "model_index.json").write_text(json.dumps(index | {"_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(InputError, match="names a StableDiffusionXLPipeline; deploykit exports text-to-image"):
        resolve(f"diffusers:{other}")
    with pytest.raises(InputError, match=r"as family \('ddpm', 'text-to-image'\), not 'gpt'"):
        resolve(f"diffusers:{folder}", "gpt")


@pytest.mark.slow
def test_sd2_shaped_pipeline_matches_diffusers(tmp_path: Path) -> None:
    """SD 2.x's differences: v-prediction under Euler, linear projections, heads per level, upcast attention and the
    pad token '!' (id 0, not end-of-text). Measured: 8.9e-7 (Euler), 8.0e-7 (DPM-Solver++(2M))."""
    scheduler = diffusers.EulerDiscreteScheduler(**{k: v for k, v in SD15_SCHEDULE.items() if k in (
        "beta_schedule", "beta_start", "beta_end", "steps_offset")}, prediction_type="v_prediction")
    folder = save_pipeline(tmp_path / "sd2", scheduler, use_linear_projection=True, attention_head_dim=(2, 4),
                           upcast_attention=True)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = folder / "tokenizer" / name
        path.write_text(json.dumps(json.loads(path.read_text()) | {"pad_token": "!"}))
    resolved = resolve(f"diffusers:{folder}")
    deploykit.export(resolved.model, resolved.family, tmp_path / "b", source=resolved.source,
                     tokenizer=resolved.tokenizer)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    clip = transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer")
    with deploykit.load(tmp_path / "b") as dep:
        ids = dep.codec().encode(PROMPTS[0], special=True)
        assert ids.tolist() == clip(PROMPTS[0], padding="max_length", max_length=77).input_ids and ids[-1] == 0
        loop = dep.bundle.loop
        assert loop.schedulers[0] == "euler" and loop.schedule["prediction_type"] == "v_prediction"
        for name in ("euler", "dpm++2m"):
            options = dep.options(prompts=PROMPTS, negative_prompts=NEGATIVE, steps=12, scheduler=name)
            start, noise = draw_noise(loop.latent_shape, scheduler_for(loop, options), 2, 5)
            latents = start / np.float32(scheduler_for(loop, options).init_noise_sigma)
            np.testing.assert_allclose(dep.sample(2, 5, options), _pipeline_run(pipe, name, latents, noise, 7.5, 12),
                                       atol=TOLERANCE, err_msg=name)


@pytest.mark.slow
def test_fused_pipeline_matches_diffusers(tmp_path: Path) -> None:
    """`export diffusers:DIR --fuse`: the text encoder's, UNet's and VAE's attention become opset-23 Attention, and a
    guided DDIM run still matches StableDiffusionPipeline within the tolerance."""
    folder = save_pipeline(tmp_path / "pipe")
    resolved = resolve(f"diffusers:{folder}")
    bundle = deploykit.export(resolved.model, resolved.family, tmp_path / "b", source=resolved.source,
                              tokenizer=resolved.tokenizer, fuse=True)
    assert set(bundle.manifest["fused"]) == {"text_encoder", "denoiser", "decoder", "encoder"}
    assert all(ops.get("Attention", 0) > 0 for ops in bundle.manifest["fused"].values())
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    with deploykit.load(bundle.path) as dep:
        loop = dep.bundle.loop
        options = dep.options(prompts=PROMPTS, negative_prompts=NEGATIVE, steps=12, scheduler="ddim")
        start, noise = draw_noise(loop.latent_shape, scheduler_for(loop, options), 2, 5)
        latents = start / np.float32(scheduler_for(loop, options).init_noise_sigma)
        np.testing.assert_allclose(dep.sample(2, 5, options), _pipeline_run(pipe, "ddim", latents, noise, 7.5, 12),
                                   atol=TOLERANCE)
