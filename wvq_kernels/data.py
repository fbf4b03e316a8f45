"""Image datasets for the reference VQ-VAE: 32x32 RGB patches as float tensors in [-1, 1].

The embedded default needs no download: random patches of the photographs shipped with
scikit-learn. Train patches come from the left 3/4 of each photograph and eval patches from the
right 1/4, so the two sets never share a pixel.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

PATCH = 32
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def random_patches(image: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random PATCH x PATCH crops of one (H, W, 3) uint8 image."""
    height, width = image.shape[:2]
    rows = rng.integers(0, height - PATCH + 1, count)
    cols = rng.integers(0, width - PATCH + 1, count)
    return np.stack([image[r:r + PATCH, c:c + PATCH] for r, c in zip(rows, cols)])


def patches_from_images(images: list[np.ndarray], count: int, seed: int) -> torch.Tensor:
    """``count`` patches spread evenly over ``images`` (each at least PATCH x PATCH)."""
    rng = np.random.default_rng(seed)
    shares = np.diff(np.linspace(0, count, len(images) + 1).round().astype(int))
    crops = [random_patches(img, n, rng) for img, n in zip(images, shares) if n > 0]
    return to_tensor(np.concatenate(crops))


def split_columns(images: list[np.ndarray], eval_share: float = 0.25):
    """(train regions, eval regions): each image cut at a column into two disjoint parts, the
    eval part at least PATCH wide (so narrow images still give eval patches)."""
    train, held_out = [], []
    for img in images:
        cut = min(int(img.shape[1] * (1 - eval_share)), img.shape[1] - PATCH)
        train.append(img[:, :cut])
        held_out.append(img[:, cut:])
    return train, held_out


def sample_images() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return [np.ascontiguousarray(img, dtype=np.uint8) for img in load_sample_images().images]


def load_folder(folder: str | Path) -> list[np.ndarray]:
    """Every image file under ``folder`` as uint8 (H, W, 3); needs Pillow."""
    from PIL import Image

    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    images = [img for img in images if min(img.shape[:2]) >= PATCH]
    if not images:
        raise ValueError(f"data: no image of at least {PATCH}x{PATCH} under {folder}")
    return images


def load_npz(path: str | Path) -> np.ndarray:
    """CIFAR-style archive: array ``x`` or ``images``, uint8 (N, 32, 32, 3)."""
    with np.load(path) as archive:
        key = next((k for k in ("x", "images") if k in archive), None)
        if key is None:
            raise ValueError(f"data: {path} has neither 'x' nor 'images' (has {archive.files})")
        images = archive[key]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (PATCH, PATCH, 3):
        raise ValueError(f"data: {path}:{key} must be uint8 (N, 32, 32, 3), "
                         f"got {images.dtype} {images.shape}")
    return images


def load_datasets(data: str | None = None, *, train_size: int = 20000, eval_size: int = 8192,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, eval) patches. ``data``: None (embedded photographs), a folder, or a ``.npz``.

    For a ``.npz`` the last ``eval_size`` images (at most a quarter) are the eval set.
    """
    if data is not None and str(data).endswith(".npz"):
        images = load_npz(data)
        held = min(eval_size, len(images) // 4) or 1
        return to_tensor(images[:-held]), to_tensor(images[-held:])
    images = sample_images() if data is None else load_folder(data)
    train_regions, eval_regions = split_columns(images)
    return (patches_from_images(train_regions, train_size, seed),
            patches_from_images(eval_regions, eval_size, seed + 1))
