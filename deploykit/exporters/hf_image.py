"""The `hf:DIR` route for image classifiers (ViT, ConvNeXt, ResNet and other `*ForImageClassification` models saved
with save_pretrained): exported through the `cnn` family, `image` [batch, C, H, W] -> `logits` [batch, classes], at
the size the model was configured for (its config's `image_size`, else the crop / resize its image processor's
`preprocessor_config.json` records). Preprocessing (resize, normalize) stays the caller's, as with transformers'
model call; the bundle runs without torch and transformers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError


class HFImageClassifier(nn.Module):
    """A transformers image classifier behind the cnn protocol: `input_shape` (C, H, W); forward(image) -> logits."""

    def __init__(self, model: nn.Module, height: int, width: int) -> None:
        super().__init__()
        self.model = model
        self.input_shape = (int(model.config.num_channels), height, width)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=image).logits


def _size(value: Any) -> tuple[int, int] | None:
    """(H, W) from an int, a [H, W] pair or an image processor's size dict (height/width or shortest_edge)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
        return int(value[0]), int(value[1])
    if isinstance(value, dict):
        if "height" in value and "width" in value:
            return _size([value["height"], value["width"]])
        return _size(value.get("shortest_edge"))
    return None


def image_size(folder: Path, config: Any) -> tuple[int, int]:
    """The (H, W) the model takes: its config's image_size, else its image processor's crop_size or size;
    InputError when neither says."""
    found = _size(getattr(config, "image_size", None))
    processor = folder / "preprocessor_config.json"
    if found is None and processor.is_file():
        try:
            saved = json.loads(processor.read_text())
        except (ValueError, OSError) as exc:
            raise InputError(f"hf:{folder}: preprocessor_config.json is not JSON ({exc}).") from exc
        if isinstance(saved, dict):
            found = _size(saved.get("crop_size")) or _size(saved.get("size"))
    if found is None:
        raise InputError(f"hf:{folder}: neither config.json (image_size) nor preprocessor_config.json (crop_size, size) "
                         "gives the image size this classifier takes; save its image processor beside it "
                         "(`processor.save_pretrained(DIR)`) or set image_size in config.json.")
    return found


def wrap(model: nn.Module, folder: Path) -> HFImageClassifier:
    """The loaded classifier for the cnn family, at the size its folder records."""
    height, width = image_size(folder, model.config)
    return HFImageClassifier(model.eval(), height, width)
