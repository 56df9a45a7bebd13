"""Text-to-image latent diffusion, as diffusers' StableDiffusionPipeline runs it (numpy only): prompts and negative
prompts through the bundle's tokenizer.json (padded to the model's length) and its `text_encoder` graph, classifier-
free guidance over the cross-attention `denoiser` on the host with any sampler of the scheduler registry, and the
`decoder` (the VAE's) from latents / scaling_factor to pixels in [0, 1]. Image-to-image as
StableDiffusionImg2ImgPipeline: the `encoder` (the VAE's) turns init images into latents, noised to where the last
`strength` of the steps begins.

Randomness comes from one seed as for the other diffusion bundles (x_T, then one normal draw per network call;
image-to-image: the encoder's latent draw, the added noise, then one draw per call), or x_T is given (`latents`,
diffusers' `latents=`): the same latents through the pipeline and through the bundle give the same image.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..checks import check_count
from ..errors import InputError
from .diffusion import MAX_GUIDANCE, Denoiser, DenoisingOptions, ScheduledLoop, draw_noise, host_loop, scheduler_for
from .kinds import IMAGES, LoopKind, Runners, register
from .schedulers import SCHEDULERS
from .tokens import Codec

DEFAULT_GUIDANCE = 7.5  # diffusers' StableDiffusionPipeline default
DEFAULT_STRENGTH = 0.8  # diffusers' StableDiffusionImg2ImgPipeline default


@dataclass(frozen=True, kw_only=True)
class TextToImageConfig(ScheduledLoop):
    """`text_encoder` (input_ids [batch, tokens]) -> hidden states, `denoiser` (x, t, encoder_hidden_states) -> the
    prediction, `decoder` (z) -> image in [-1, 1], `encoder` (image in [-1, 1]) -> the latent distribution's mean
    and std. Latents are [latent_shape], images [image_shape]; the decoder takes latents divided by `scaling_factor`
    (the VAE config's). Prompts are `tokens` ids long (the tokenizer pads and truncates to the pipeline's
    model_max_length)."""

    kind = "text_to_image"
    latent_shape: list[int]
    scaling_factor: float
    tokens: int
    vocab_size: int


@dataclass(frozen=True)
class TextToImageOptions(DenoisingOptions):
    """The DenoisingOptions (guidance default 7.5; as in diffusers, w > 1 mixes uncond + w (cond - uncond) and w <= 1
    samples from the prompt alone) plus what to draw: `prompts` and `negative_prompts` (text; each list is cycled
    over the n images; no negative prompt is the empty one), or their token ids `prompt_ids` / `negative_ids`
    [prompts, tokens] as the bundle's tokenizer makes them, and optionally x_T as diffusers' `latents` [n, *latent]
    (scaled by the scheduler's initial sigma, as the pipeline does). Image-to-image: `init_images` [images, *image]
    in [0, 1] (cycled over n) and `strength` (default 0.8: the last 80 % of the steps run)."""

    prompts: list[str] | None = None
    negative_prompts: list[str] | None = None
    prompt_ids: np.ndarray | None = None
    negative_ids: np.ndarray | None = None
    latents: np.ndarray | None = None
    init_images: np.ndarray | None = None
    strength: float | None = None


def _ids(given: Any, loop: TextToImageConfig, what: str) -> np.ndarray:
    """Token ids [prompts, tokens] int64 within the vocabulary; InputError naming `what` otherwise."""
    ids = np.asarray(given)
    if ids.ndim != 2 or not len(ids) or ids.shape[1] != loop.tokens or not np.issubdtype(ids.dtype, np.integer):
        raise InputError(f"{what} has shape {list(ids.shape)} ({ids.dtype}); expected integer token ids "
                         f"[prompts >= 1, {loop.tokens}], as the bundle's tokenizer pads them.")
    if ids.min() < 0 or ids.max() >= loop.vocab_size:
        raise InputError(f"{what} holds ids outside the text encoder's vocabulary 0..{loop.vocab_size - 1}.")
    return ids.astype(np.int64)


def tokenize(codec: Codec, options: TextToImageOptions) -> TextToImageOptions:
    """The options with their prompts as token ids (the empty negative prompt when none is given)."""
    if options.prompts is None:
        return options
    if isinstance(options.prompts, str) or not options.prompts or not all(isinstance(p, str) for p in options.prompts):
        raise InputError("--prompt: give at least one text prompt (a list of str from Python).")
    negative = [""] if options.negative_prompts is None else options.negative_prompts
    if isinstance(negative, str) or not negative or not all(isinstance(p, str) for p in negative):
        raise InputError("--negative-prompt: give text prompts (a list of str from Python).")
    encode = lambda texts, what: np.stack([codec.encode(t, what, special=True) for t in texts])  # noqa: E731
    return replace(options, prompts=None, negative_prompts=None, prompt_ids=encode(options.prompts, "prompt"),
                   negative_ids=encode(negative, "negative prompt"))


def _embed(runners: Runners, ids: np.ndarray, n: int) -> np.ndarray:
    """The text encoder's hidden states for ids cycled over n rows (each distinct prompt encoded once)."""
    hidden = runners["text_encoder"].infer({"input_ids": ids})["hidden_states"]
    return hidden[np.arange(n) % len(ids)]


def _array(given: Any, shape: tuple[int, ...], what: str, low: float = -np.inf, high: float = np.inf) -> np.ndarray:
    """`given` as float32 of `shape` (a None dim: any size >= 1) with finite values in [low, high]; InputError naming
    `what` otherwise."""
    array = np.asarray(given)
    fits = array.ndim == len(shape) and all(d is None and g >= 1 or d == g for d, g in zip(shape, array.shape))
    floats = np.issubdtype(array.dtype, np.floating)
    if not (fits and floats and np.isfinite(array).all() and np.all((array >= low) & (array <= high))):
        wanted = [d if d is not None else "k" for d in shape]
        raise InputError(f"{what} has shape {list(array.shape)} ({array.dtype}); expected finite floats {wanted}"
                         + (f" in [{low:g}, {high:g}]" if np.isfinite(low) else "") + ".")
    return array.astype(np.float32)


def encode(runners: Runners, loop: TextToImageConfig, images: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Latents of images [n, *image] in [0, 1] as the image-to-image pipeline makes them: the encoder's mean + std x
    draws, times the scaling factor (one image at a time)."""
    latents = []
    for image, draw in zip(images, draws):
        out = runners["encoder"].infer({"image": image[None] * np.float32(2) - np.float32(1)})
        latents.append((out["mean"] + out["std"] * draw[None])[0])
    return np.stack(latents) * np.float32(loop.scaling_factor)


def _start(runners: Runners, loop: TextToImageConfig, options: TextToImageOptions, scheduler: Any, n: int, seed: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """(the first call's sample, per-call noise) from the seed: x_T (or the given latents scaled by the initial
    sigma); image-to-image: the scheduler started at `strength` and the init images' latents noised to there."""
    latent = tuple(loop.latent_shape)
    if options.init_images is None:
        if options.strength is not None:
            raise InputError("--strength is for image-to-image: give --init-image too (init_images from Python).")
        x, noise = draw_noise(latent, scheduler, n, seed)
        if options.latents is None:
            return x, noise
        return _array(options.latents, (n, *latent), "latents") * np.float32(scheduler.init_noise_sigma), noise
    if options.latents is not None:
        raise InputError("latents are the start of text-to-image; image-to-image starts from --init-image. Give one.")
    images = _array(options.init_images, (None, *loop.image_shape), "--init-image", 0.0, 1.0)
    steps = (len(scheduler.timesteps) + scheduler.order - 1) // scheduler.order
    scheduler.start_at(steps, DEFAULT_STRENGTH if options.strength is None else float(options.strength))
    rng = np.random.default_rng(seed)
    draws, added = (rng.standard_normal((n, *latent), dtype=np.float32) for _ in range(2))
    x = scheduler.add_noise(encode(runners, loop, images[np.arange(n) % len(images)], draws), added)
    return x, rng.standard_normal((len(scheduler.timesteps), n, *latent), dtype=np.float32)


def decode(runners: Runners, loop: TextToImageConfig, latents: np.ndarray) -> np.ndarray:
    """Images [n, C, H, W] in [0, 1]: the decoder on latents / scaling_factor, one at a time (a VAE decoder's
    activations at full resolution dwarf the latents), then (x / 2 + 0.5) clipped, as diffusers' postprocess."""
    scale = np.float32(loop.scaling_factor)
    images = [runners["decoder"].infer({"z": z[None] / scale})["image"][0] for z in latents]
    return np.clip(np.stack(images) / np.float32(2) + np.float32(0.5), 0, 1)


def _denoise(runners: Runners, loop: TextToImageConfig, n: int, seed: int, options: TextToImageOptions
             ) -> np.ndarray:
    """The denoised latents [n, *latent] for the prompts' ids (cycled), guided by the negative ones."""
    check_count(n)
    if options.prompt_ids is None:
        raise InputError("a text-to-image bundle draws from prompts: give --prompt TEXT (prompts=[...] or "
                         "prompt_ids from Python).")
    guidance = DEFAULT_GUIDANCE if options.guidance is None else float(options.guidance)
    if not (np.isfinite(guidance) and 0 <= guidance <= MAX_GUIDANCE):
        raise InputError(f"--guidance is {guidance}, expected a finite scale >= 0 and at most {MAX_GUIDANCE:g} "
                         f"(<= 1: the prompt alone, as diffusers; typical {DEFAULT_GUIDANCE}).")
    scheduler = scheduler_for(loop, options)
    cond = {"encoder_hidden_states": _embed(runners, _ids(options.prompt_ids, loop, "prompt_ids"), n)}
    uncond = None
    if guidance > 1:  # diffusers' do_classifier_free_guidance
        if options.negative_ids is None:
            raise InputError("negative_ids: guidance > 1 needs the negative prompts' ids (the empty prompt's for "
                             "none); give prompts= and the bundle's tokenizer makes them.")
        uncond = {"encoder_hidden_states": _embed(runners, _ids(options.negative_ids, loop, "negative_ids"), n)}
    x, noise = _start(runners, loop, options, scheduler, n, seed)
    return host_loop(Denoiser(runners["denoiser"], n, cond, uncond, guidance, options.batched), scheduler, x, noise,
                     options.on_step)


def sample_text_to_image(runners: Runners, loop: TextToImageConfig, n: int, seed: int,
                         options: TextToImageOptions = TextToImageOptions()) -> np.ndarray:
    """`n` images [n, C, H, W] in [0, 1] from the prompts (cycled), guided by the negative prompts."""
    return decode(runners, loop, _denoise(runners, loop, n, seed, options))


def check_text_to_image(runners: Runners, loop: TextToImageConfig, seed: int) -> dict[str, np.ndarray]:
    """A short guided run of the bundle's default sampler (two seeded prompts of random ids and a negative one, two
    images at w = 7.5): the final latents and the decoded images. The samplers' tables are the registry's, checked
    against diffusers' schedulers on their own; this proves the graphs through a whole loop."""
    ids = np.random.default_rng(seed).integers(0, loop.vocab_size, (3, loop.tokens))
    name = loop.schedulers[0]
    latents = _denoise(runners, loop, 2, seed, TextToImageOptions(
        prompt_ids=ids[:2], negative_ids=ids[2:], steps=SCHEDULERS[name].short_steps, scheduler=name))
    return {"latents": latents, "images": decode(runners, loop, latents)}


register(LoopKind(
    TextToImageConfig, "text-to-image", "sample", TextToImageOptions, sample=sample_text_to_image,
    check=check_text_to_image, writer=IMAGES, tokenize=tokenize,
    quick={"steps": 10, "prompts": ["a photo of a cat"]},  # quantize's comparison
))
