"""`diffusers:DIR`: a diffusers pipeline folder saved with `save_pretrained` (`unet/` + `scheduler/`), exported
through the `ddpm` family: the UNet as the denoiser and the in-graph sampler, the scheduler's config (betas,
prediction type, spacing, offset, clipping) as the bundle's schedule, the pipeline's scheduler as the default.

The UNet is a `UNet2DModel` or a `UNet2DConditionModel` without cross-attention; a class-conditional one
(`num_class_embeds`) uses its last class embedding as the null label of classifier-free guidance (DiT's
convention), so it has num_class_embeds - 1 classes. Timesteps stay float32, as diffusers feeds them
(Euler and Heun use fractional ones). Nothing is fetched; diffusers is needed only here
(`pip install deploykit[diffusers]`), the bundle runs without it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError, optional_import
from ..runtimes.schedulers import SCHEDULERS, for_diffusers_class
from ..runtimes.schedulers.noise_schedule import scheduler_config
from .onnx_export import first_line

UNETS = ("UNet2DModel", "UNet2DConditionModel")
UNSUPPORTED_PARTS = {"vae": "latent pipelines without a text encoder (a vae/ folder)"}


def diffusers_module() -> Any:
    diffusers = optional_import("diffusers", "diffusers:DIR needs diffusers: `pip install deploykit[diffusers]`.")
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    return diffusers


class DiffusersDenoiser(nn.Module):
    """A diffusers UNet behind the ddpm protocol: forward(x, t float32 [batch][, label]) -> the UNet's prediction."""

    timestep_dtype = "float32"

    def __init__(self, unet: nn.Module, scheduler_config: dict[str, Any]) -> None:
        super().__init__()
        config = unet.config
        if int(config.out_channels) != int(config.in_channels):
            raise InputError(f"the UNet has {config.out_channels} output channels for {config.in_channels} input "
                             "channels (a learned variance?); deploykit's samplers need a prediction of x's shape.")
        size = config.sample_size
        height, width = (size, size) if isinstance(size, int) else size
        self.unet = unet
        self.event_shape = (int(config.in_channels), int(height), int(width))
        classes = getattr(config, "num_class_embeds", None)
        self.num_classes = int(classes) - 1 if classes else 0
        self.scheduler_config = scheduler_config
        self._conditional_unet = type(unet).__name__ == "UNet2DConditionModel"

    def forward(self, x: torch.Tensor, t: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        extra: dict[str, Any] = {} if label is None else {"class_labels": label}
        if self._conditional_unet:
            extra["encoder_hidden_states"] = None
        return self.unet(x, t, return_dict=False, **extra)[0]


@dataclass(frozen=True)
class DiffusersSource:
    """What diffusers:DIR gives the exporter: the wrapped UNet and a fingerprint of the folder."""

    model: DiffusersDenoiser
    fingerprint: str


def fingerprint(folder: Path) -> str:
    """sha256 over the UNet and scheduler configs and the UNet's weight files' names and sizes."""
    digest = hashlib.sha256()
    for path in (folder / "unet" / "config.json", folder / "scheduler" / "scheduler_config.json"):
        digest.update(path.read_bytes())
    for path in sorted((folder / "unet").glob("*")):
        if path.suffix in (".safetensors", ".bin"):
            digest.update(f"{path.name}:{path.stat().st_size}".encode())
    return digest.hexdigest()


def _checked_folder(folder: str | Path) -> Path:
    root = Path(folder)
    for part, what in UNSUPPORTED_PARTS.items():
        if (root / part).is_dir():
            raise InputError(f"diffusers:{folder}: {what} are not supported yet; deploykit exports unconditional and "
                             "class-conditional UNet pipelines (unet/ + scheduler/).")
    for need in ("unet/config.json", "scheduler/scheduler_config.json"):
        if not (root / need).is_file():
            raise InputError(f"diffusers:{folder}: no {need} there; give a pipeline folder written by save_pretrained "
                             "(unet/ and scheduler/). Nothing is downloaded.")
    return root


def json_object(path: Path, folder: str | Path) -> dict[str, Any]:
    """The JSON object in `path`; InputError naming the file when it is not one."""
    try:
        value = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"diffusers:{folder}: {path.relative_to(Path(folder))} is not JSON ({exc}); give the files "
                         "save_pretrained wrote.") from exc
    if not isinstance(value, dict):
        raise InputError(f"diffusers:{folder}: {path.relative_to(Path(folder))} holds a {type(value).__name__}, "
                         "expected a JSON object of settings.")
    return value


def pipeline_schedule(root: Path, folder: str | Path) -> dict[str, Any]:
    """The pipeline's scheduler config, checked (a class deploykit reproduces, settings it runs) before any network
    loads, with its `_class_name`; InputError naming the folder otherwise."""
    schedule = json_object(root / "scheduler" / "scheduler_config.json", folder)
    try:
        for_diffusers_class(schedule.get("_class_name"))
        checked = scheduler_config(schedule)  # types and ranges, before the UNet loads or any export runs
    except InputError as exc:
        raise InputError(f"diffusers:{folder}: {exc}") from exc
    return checked | ({"_class_name": schedule["_class_name"]} if "_class_name" in schedule else {})


def load(folder: str | Path) -> Any:
    """The pipeline saved in `folder`: a text-to-image pipeline (text_encoder/) through its route
    (diffusers_text.py), else its UNet (float32, eval) wrapped for the ddpm family with its scheduler config;
    InputError naming what is missing or unsupported."""
    if (Path(folder) / "text_encoder").is_dir():
        from . import diffusers_text

        return diffusers_text.load(Path(folder), folder)
    root = _checked_folder(folder)
    unet_class = json_object(root / "unet" / "config.json", folder).get("_class_name")
    schedule = pipeline_schedule(root, folder)
    if unet_class not in UNETS:
        raise InputError(f"diffusers:{folder}: unet/ holds a {unet_class}; deploykit exports {' and '.join(UNETS)}.")
    diffusers = diffusers_module()
    try:
        unet = getattr(diffusers, unet_class).from_pretrained(root / "unet", local_files_only=True,
                                                               torch_dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001  (config, safetensors and torch errors of every kind)
        raise InputError(f"diffusers:{folder}: diffusers could not load the UNet ({first_line(exc)}); "
                         "give the unet/ folder save_pretrained wrote.") from exc
    config = unet.config
    blocks = [*config.down_block_types, *config.up_block_types, str(getattr(config, "mid_block_type", ""))]
    if any("CrossAttn" in b for b in blocks):
        raise InputError(f"diffusers:{folder}: the UNet has cross-attention blocks, which need a text encoder's "
                         "prompt embeddings, and the folder has no text_encoder/; save the whole text-to-image pipeline "
                         "(pipe.save_pretrained: text_encoder/, tokenizer/, unet/, vae/, scheduler/) and export that.")
    return DiffusersSource(DiffusersDenoiser(unet.eval(), schedule), fingerprint(root))


def reference_loop(model: Callable[..., torch.Tensor], scheduler: str, steps: int, start: np.ndarray,
                   noise: np.ndarray, labels: np.ndarray | None = None, guidance: float = 1.0,
                   scheduler_config: Mapping[str, Any] | None = None, **options: Any) -> np.ndarray:
    """The sampling loop as diffusers runs it, the parity reference: diffusers' own scheduler class for `scheduler`
    (from the pipeline's config, as `Scheduler.from_config` swaps them), scale_model_input / model / step, with
    x_T = start * init_noise_sigma and noise[i] injected wherever step i draws (deploykit's noise layout).
    `model(x, t[, label])` is a DiffusersDenoiser or any denoiser on torch tensors; `scheduler_config` defaults to
    the model's. Guided runs batch cond and uncond (null label `model.num_classes`) like deploykit.
    options: eta, karras, clipped_model_output."""
    import importlib
    from contextlib import nullcontext
    from unittest import mock


    diffusers = diffusers_module()
    cls = getattr(diffusers, SCHEDULERS[scheduler].diffusers_class)
    config = dict(model.scheduler_config if scheduler_config is None else scheduler_config)
    if options.get("karras") is not None:
        config["use_karras_sigmas"] = bool(options["karras"])
    sched = cls.from_config(config)
    sched.set_timesteps(steps)
    x = torch.from_numpy(start) * sched.init_noise_sigma
    index = 0
    module = importlib.import_module(cls.__module__)
    draw = lambda shape, **kw: torch.from_numpy(noise[index]).to(kw.get("dtype") or torch.float32)  # noqa: E731
    label = None if labels is None else torch.from_numpy(labels)
    patch = mock.patch.object(module, "randn_tensor", draw) if hasattr(module, "randn_tensor") else nullcontext()
    with patch, torch.no_grad():
        for index, t in enumerate(sched.timesteps):
            inp = sched.scale_model_input(x, t)
            times = t.to(torch.float32).expand(len(x))
            if label is None:
                out = model(inp, times)
            elif guidance == 1.0:
                out = model(inp, times, label)
            else:
                both = model(torch.cat([inp, inp]), torch.cat([times, times]),
                             torch.cat([label, torch.full_like(label, model.num_classes)]))
                cond, uncond = both.chunk(2)
                out = uncond + guidance * (cond - uncond)
            extra: dict[str, Any] = {}
            if scheduler == "ddim":
                eta = float(options.get("eta") or 0.0)
                extra = {"eta": eta, "use_clipped_model_output": bool(options.get("clipped_model_output")),
                         "variance_noise": torch.from_numpy(noise[index]) if eta > 0 else None}
            x = sched.step(out, t, x, **extra).prev_sample
    return x.numpy()
