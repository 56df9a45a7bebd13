"""`diffusers:DIR` text-to-image route: a StableDiffusionPipeline folder saved with `save_pretrained` (`text_encoder/`
a CLIPTextModel, `tokenizer/`, `unet/` a UNet2DConditionModel with cross-attention, `vae/` an AutoencoderKL,
`scheduler/`), exported as the `text-to-image` family: the text encoder, the cross-attention denoiser (prompt
embeddings as an input of any token length) and the VAE's decoder and encoder (image-to-image), with the scheduler
config and the VAE's scaling_factor in the loop (runtimes/text_to_image.py).

The bundle's tokenizer.json is built here from the folder's tokenizer as transformers loads it (real SD 1.x folders
carry vocab.json + merges.txt only), with the pipeline's padding and truncation to model_max_length baked in, so the
bundle encodes prompts with `tokenizers` alone. The safety checker, when the folder has one, is not exported.
"""

from __future__ import annotations

import atexit
import hashlib
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError, optional_import
from ..runtimes.schedulers.noise_schedule import PREDICTIONS, training_steps
from ..runtimes.text_to_image import TextToImageConfig
from ..specs import DimRule, TensorSpec
from . import diffusers as pipelines
from .diffusion import samplers_of
from .hf import transformers_module
from .onnx_export import first_line
from .registry import Family, Role, Tolerance, register

PIPELINES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline")  # the same five components
PARTS = {"text_encoder": "CLIPTextModel", "unet": "UNet2DConditionModel", "vae": "AutoencoderKL"}
# UNet2DConditionModel settings a StableDiffusionPipeline does not feed: refused by name
UNET_UNSUPPORTED = {"addition_embed_type": "added conditions (SDXL's text_time: pooled embeddings and size ids)",
                    "class_embed_type": "class embeddings", "num_class_embeds": "class labels",
                    "time_cond_proj_dim": "a guidance-scale embedding (LCM distillation)",
                    "encoder_hid_dim_type": "a projection of the encoder states (IP-adapter, Kandinsky)"}
PROTOCOL = ("a StableDiffusionPipeline folder: text_encoder/ (CLIPTextModel), tokenizer/, unet/ "
            "(UNet2DConditionModel with cross-attention), vae/ (AutoencoderKL), scheduler/")


class TextEncoderGraph(nn.Module):
    """input_ids [batch, tokens] -> the last hidden states, the prompt embeddings the pipeline feeds the UNet."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids, return_dict=False)[0]


class CrossAttentionDenoiser(nn.Module):
    """(x, t float32 [batch], encoder_hidden_states [batch, tokens, dim]) -> the UNet's prediction."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]


class VaeDecoderGraph(nn.Module):
    """z [batch, *latent] (already divided by the scaling factor) -> image [batch, C, H, W] in about [-1, 1]."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z, return_dict=False)[0]


class VaeEncoderGraph(nn.Module):
    """image [batch, C, H, W] in [-1, 1] -> (mean, std) of the VAE's latent distribution (quant_conv applied)."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist = self.vae.encode(image, return_dict=False)[0]
        return dist.mean, dist.std


class TextToImagePipeline(nn.Module):
    """The networks of a Stable-Diffusion-shaped pipeline as four graphs, and what its loop needs (see PROTOCOL)."""

    def __init__(self, text_encoder: nn.Module, unet: nn.Module, vae: nn.Module, schedule: dict[str, Any],
                 tokens: int) -> None:
        super().__init__()
        self.text_encoder = TextEncoderGraph(text_encoder)
        self.denoiser = CrossAttentionDenoiser(unet)
        self.decoder = VaeDecoderGraph(vae)
        self.encoder = VaeEncoderGraph(vae)
        size = unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else size
        self.latent_shape = [int(unet.config.in_channels), int(height), int(width)]
        scale = 2 ** (len(vae.config.block_out_channels) - 1)  # the pipeline's vae_scale_factor
        self.image_shape = [int(vae.config.out_channels), int(height) * scale, int(width) * scale]
        self.scaling_factor = float(vae.config.scaling_factor)
        self.schedule, self.tokens = schedule, tokens
        self.vocab_size = int(text_encoder.config.vocab_size)
        self.positions = int(text_encoder.config.max_position_embeddings)
        self.width = int(text_encoder.config.hidden_size)


@dataclass(frozen=True)
class TextToImageSource:
    """What the route gives the exporter: the pipeline, its fingerprint and the tokenizer.json built for it."""

    model: TextToImagePipeline
    fingerprint: str
    tokenizer: Path
    family: str = "text-to-image"


def fingerprint(root: Path) -> str:
    """sha256 over the pipeline's configs and tokenizer files and its weight files' names and sizes."""
    digest = hashlib.sha256((root / "model_index.json").read_bytes())
    for part in ("scheduler", "text_encoder", "tokenizer", "unet", "vae"):
        for path in sorted(p for p in (root / part).glob("*") if p.is_file()):
            is_weight = path.suffix in (".safetensors", ".bin")
            digest.update(f"{part}/{path.name}:{path.stat().st_size}".encode() if is_weight else path.read_bytes())
    return digest.hexdigest()


def _checked_index(root: Path, folder: str | Path) -> None:
    """InputError unless model_index.json names a supported pipeline with the five parts as classes we export."""
    if not (root / "model_index.json").is_file():
        raise InputError(f"diffusers:{folder}: no model_index.json there; give the folder a text-to-image pipeline's "
                         "save_pretrained wrote.")
    index = pipelines.json_object(root / "model_index.json", folder)
    name = index.get("_class_name")
    if name not in PIPELINES:
        raise InputError(f"diffusers:{folder}: model_index.json names a {name}; deploykit exports text-to-image "
                         f"pipelines of the {' / '.join(PIPELINES)} shape ({PROTOCOL}).")
    for part in (*PARTS, "tokenizer", "scheduler"):
        if not (root / part).is_dir():
            raise InputError(f"diffusers:{folder}: no {part}/ folder; a {name} needs it ({PROTOCOL}).")
    for part, cls in PARTS.items():
        given = index.get(part, [None, None])[-1] if isinstance(index.get(part), list) else None
        if given != cls:
            raise InputError(f"diffusers:{folder}: {part} is a {given}; deploykit exports a {cls} there ({PROTOCOL}).")


def _load_part(cls: Any, path: Path, folder: str | Path) -> nn.Module:
    try:
        return cls.from_pretrained(path, local_files_only=True, torch_dtype=torch.float32).eval()
    except Exception as exc:  # noqa: BLE001  (config, safetensors and torch errors of every kind)
        raise InputError(f"diffusers:{folder}: {cls.__name__} could not load {path.name}/ ({first_line(exc)}); give "
                         "the folder save_pretrained wrote.") from exc


def _checked_unet(unet: nn.Module, text_width: int, folder: str | Path) -> None:
    config = unet.config
    for key, what in UNET_UNSUPPORTED.items():
        if getattr(config, key, None) is not None:
            raise InputError(f"diffusers:{folder}: the UNet's config sets {key}={getattr(config, key)!r}, "
                             f"{what}, which deploykit's text-to-image loop does not feed.")
    if int(config.in_channels) != int(config.out_channels):
        raise InputError(f"diffusers:{folder}: the UNet takes {config.in_channels} channels and predicts "
                         f"{config.out_channels} (an inpainting or upscaling UNet, or a learned variance); deploykit "
                         "exports text-to-image UNets that predict their input's shape.")
    if int(config.cross_attention_dim) != text_width:
        raise InputError(f"diffusers:{folder}: the UNet's cross_attention_dim is {config.cross_attention_dim} but the "
                         f"text encoder's hidden size is {text_width}; they must be the same pipeline's.")


def build_tokenizer(path: Path, folder: str | Path, positions: int) -> tuple[Path, int]:
    """(a tokenizer.json encoding as the pipeline tokenizes: padding and truncation to model_max_length, and that
    length), from the folder's tokenizer as transformers loads it (tokenizer.json, or vocab.json + merges.txt)."""
    transformers = transformers_module()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"diffusers:{folder}: transformers could not load tokenizer/ ({first_line(exc)}); give the "
                         "folder save_pretrained wrote (tokenizer.json, or vocab.json and merges.txt).") from exc
    backend = getattr(tokenizer, "backend_tokenizer", None)
    length = int(tokenizer.model_max_length)
    if backend is None or tokenizer.pad_token_id is None:
        raise InputError(f"diffusers:{folder}: tokenizer/ loads as a {type(tokenizer).__name__} without a fast "
                         "(tokenizers) backend or a pad token; deploykit needs both to pad prompts as the pipeline does.")
    if not 2 <= length <= positions:
        raise InputError(f"diffusers:{folder}: the tokenizer's model_max_length is {length}, expected 2..{positions} "
                         "(the text encoder's positions); set it in tokenizer/tokenizer_config.json.")
    tokenizers = optional_import("tokenizers", "text-to-image export needs the tokenizers package.")
    built = tokenizers.Tokenizer.from_str(backend.to_str())
    built.enable_truncation(max_length=length)
    built.enable_padding(length=length, pad_id=int(tokenizer.pad_token_id), pad_token=str(tokenizer.pad_token))
    out = Path(tempfile.mkdtemp(prefix="deploykit-tokenizer-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    built.save(str(out / "tokenizer.json"))
    return out / "tokenizer.json", length


def load(root: Path, folder: str | Path) -> TextToImageSource:
    """The text-to-image pipeline saved in `root` (float32, eval), its fingerprint and tokenizer.json; InputError
    naming what is missing or unsupported."""
    _checked_index(root, folder)
    schedule = pipelines.pipeline_schedule(root, folder)
    encoder_config = pipelines.json_object(root / "text_encoder" / "config.json", folder)
    if encoder_config.get("use_attention_mask"):
        raise InputError(f"diffusers:{folder}: the text encoder's config sets use_attention_mask, which deploykit's "
                         "text encoder graph does not take (Stable Diffusion's CLIP attends to the padding).")
    diffusers = pipelines.diffusers_module()
    text_encoder = _load_part(transformers_module().CLIPTextModel, root / "text_encoder", folder)
    unet = _load_part(diffusers.UNet2DConditionModel, root / "unet", folder)
    vae = _load_part(diffusers.AutoencoderKL, root / "vae", folder)
    _checked_unet(unet, int(text_encoder.config.hidden_size), folder)
    if int(vae.config.latent_channels) != int(unet.config.in_channels):
        raise InputError(f"diffusers:{folder}: the VAE's latent_channels {vae.config.latent_channels} are not the "
                         f"UNet's in_channels {unet.config.in_channels}.")
    path, tokens = build_tokenizer(root / "tokenizer", folder, int(text_encoder.config.max_position_embeddings))
    if (root / "safety_checker").is_dir():
        warnings.warn(f"diffusers:{folder}: the safety checker is not exported; the bundle's images are not "
                      "filtered.", UserWarning, stacklevel=2)
    model = TextToImagePipeline(text_encoder, unet, vae, schedule, tokens)
    return TextToImageSource(model, fingerprint(root), path)


def _roles(model: TextToImagePipeline) -> dict[str, Role]:
    latent = tuple(model.latent_shape)
    tokens = {"tokens": DimRule(max=model.positions)}
    output = PREDICTIONS[model.schedule.get("prediction_type") or "epsilon"]
    example = {"batch": 2, "tokens": 7}
    return {
        "text_encoder": Role(model.text_encoder, (TensorSpec("input_ids", "int64", ("batch", "tokens"),
                                                             high=model.vocab_size),), ("hidden_states",), example,
                             tokens),
        "denoiser": Role(model.denoiser, (TensorSpec("x", "float32", ("batch", *latent)),
                                          TensorSpec("t", "float32", ("batch",), high=training_steps(model.schedule)),
                                          TensorSpec("encoder_hidden_states", "float32", ("batch", "tokens", model.width))),
                         (output,), example, tokens),
        "decoder": Role(model.decoder, (TensorSpec("z", "float32", ("batch", *latent)),), ("image",), {"batch": 2}),
        "encoder": Role(model.encoder, (TensorSpec("image", "float32", ("batch", *model.image_shape)),), ("mean", "std"),
                        {"batch": 2}),
    }


def _shapes(model: TextToImagePipeline) -> list[dict[str, int]]:
    """The pipeline's prompt length at batch 2 (cond and uncond of one image), and a short prompt at batch 1."""
    return [{"batch": 2, "tokens": model.tokens}, {"batch": 1, "tokens": min(5, model.tokens)}]


def _loop(model: TextToImagePipeline) -> TextToImageConfig:
    """Every DDPM-parametrized sampler, the pipeline's own scheduler first."""
    schedule, samplers = samplers_of(model.schedule)
    return TextToImageConfig(latent_shape=list(model.latent_shape), image_shape=list(model.image_shape),
                             scaling_factor=model.scaling_factor, tokens=model.tokens, vocab_size=model.vocab_size,
                             schedule=schedule, schedulers=samplers)


# Tolerances (fp32): one graph call within 1e-4 (CLIP's hidden states reach |20| in real checkpoints: rtol);
# the loop check replays a guided 10-step loop whose latents and images stay within the same bound (README).
register(Family("text-to-image", "Stable-Diffusion-shaped text-to-image pipeline: CLIP text encoder, cross-attention "
                "UNet denoiser, VAE decoder and encoder (image-to-image)", PROTOCOL, _roles, _shapes, Tolerance(1e-4, 1e-4), ("text_to_image",),
                _loop))
