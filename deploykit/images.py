"""Write samples: a PNG grid (Pillow) or the raw .npy array."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import InputError


def to_grid(images: np.ndarray, value_range: Sequence[float], nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile [N, C, H, W] images into one uint8 [rows*H, cols*W(, C)] image."""
    n, c, h, w = images.shape
    low, high = value_range
    scaled = np.clip((images - low) / (high - low), 0, 1)
    cols = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.float32)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = (
            scaled[i].transpose(1, 2, 0)
        )
    out = (grid * 255).round().astype(np.uint8)
    return out[..., 0] if c == 1 else out


def save_samples(images: np.ndarray, path: str | Path, value_range: Sequence[float], scale: int = 4) -> Path:
    """Save to .png (grid, each pixel enlarged `scale` times) or .npy (raw float array)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix == ".npy":
        np.save(target, images)
    elif target.suffix == ".png":
        from PIL import Image

        grid = Image.fromarray(to_grid(images, value_range))
        grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST).save(target)
    else:
        raise InputError(f"--out '{target}' must end in .png (image grid) or .npy (raw array).")
    return target


def save_density_plot(points: np.ndarray, log_density: np.ndarray, extent: float, path: str | Path, scale: int = 3) -> Path:
    """A PNG of a 2-D density (log p on a square grid over [-extent, extent]^2, row 0 at the top), dark
    to bright, with `points` [n, 2] drawn on top as cyan dots."""
    from PIL import Image

    density = np.exp(log_density - log_density.max())
    shade = np.sqrt(density)[..., None] * np.array([255.0, 190.0, 90.0])  # dark -> amber
    image = np.kron(shade, np.ones((scale, scale, 1))).astype(np.uint8)
    size = image.shape[0]
    cols = np.round((points[:, 0] + extent) / (2 * extent) * (size - 1)).astype(int)
    rows = np.round((extent - points[:, 1]) / (2 * extent) * (size - 1)).astype(int)
    inside = (cols >= 1) & (cols < size - 1) & (rows >= 1) & (rows < size - 1)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            image[rows[inside] + dr, cols[inside] + dc] = (0, 220, 255)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(target)
    return target


def load_images(paths: Sequence[str | Path], shape: Sequence[int], what: str = "--init-image") -> np.ndarray:
    """Image files (PNG, JPEG, ... through Pillow) as float32 [k, C, H, W] in [0, 1] for `shape` [C, H, W]: converted
    to RGB (C = 3) or grey (C = 1), resized to H x W with Lanczos where they differ (diffusers' image processor
    resamples the same way); InputError naming a file that cannot be read as an image."""
    from PIL import Image, UnidentifiedImageError

    channels, height, width = (int(d) for d in shape)
    if channels not in (1, 3):
        raise InputError(f"{what}: this bundle's images have {channels} channels; give a .npy array from Python.")
    out = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image = image.convert("RGB" if channels == 3 else "L")
                if image.size != (width, height):
                    image = image.resize((width, height), Image.Resampling.LANCZOS)
                array = np.asarray(image, np.float32) / np.float32(255)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise InputError(f"{what} {path}: not an image Pillow can read ({exc}); give a PNG or JPEG file.") from exc
        out.append(array[None] if channels == 1 else array.transpose(2, 0, 1))
    return np.stack(out)
