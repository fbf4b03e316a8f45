"""Image datasets for the reference VQ-VAE: 32x32 RGB patches as float tensors in [-1, 1].

The embedded default needs no download: random patches of the photographs shipped with
scikit-learn and scikit-image (colour photographs, and grey-scale ones as grey RGB). Every image
is cut into TILE x TILE tiles and a fixed quarter of them, spread evenly over the image, holds
the eval patches; the rest hold the train patches. So the two sets never share a pixel, yet they
come from the same distribution: a split by image or by image half leaves codes that only one
side's content uses, which caps the evaluation utilization far below what the codebook reaches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

PATCH = 32
TILE = 64
# One tile in EVAL_PERIOD is held out; (row + 2·col) % 4 staggers them so that no image region
# lacks eval tiles.
EVAL_PERIOD = 4
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
SKIMAGE_PHOTOGRAPHS = (
    "astronaut",
    "chelsea",
    "coffee",
    "immunohistochemistry",
    "rocket",
    "camera",
    "moon",
    "coins",
    "grass",
    "gravel",
    "brick",
)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def as_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3), grey images repeated over the channels."""
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3])


def split_tiles(image: np.ndarray, phase: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(train tiles, eval tiles) of one image: its TILE x TILE tiles (edge tiles smaller, but at
    least PATCH x PATCH), each assigned to one of the two sets. ``phase`` (the image's index)
    shifts the pattern, so that a folder of single-tile images still holds out a quarter."""
    train, held_out = [], []
    height, width = image.shape[:2]
    for row, top in enumerate(range(0, height - PATCH + 1, TILE)):
        for col, left in enumerate(range(0, width - PATCH + 1, TILE)):
            tile = image[top : top + TILE, left : left + TILE]
            if min(tile.shape[:2]) >= PATCH:
                (held_out if (row + 2 * col + phase) % EVAL_PERIOD == 0 else train).append(tile)
    return train, held_out


def random_patches(image: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random PATCH x PATCH crops of one (H, W, 3) uint8 image."""
    height, width = image.shape[:2]
    rows = rng.integers(0, height - PATCH + 1, count)
    cols = rng.integers(0, width - PATCH + 1, count)
    return np.stack([image[r : r + PATCH, c : c + PATCH] for r, c in zip(rows, cols)])


def patches_from_tiles(
    tiles_per_image: list[list[np.ndarray]], count: int, seed: int
) -> torch.Tensor:
    """``count`` patches in random order, spread evenly over the images (so that one large
    image does not dominate), each from a tile of its image drawn uniformly."""
    rng = np.random.default_rng(seed)
    tiles_per_image = [tiles for tiles in tiles_per_image if tiles]
    shares = np.diff(np.linspace(0, count, len(tiles_per_image) + 1).round().astype(int))
    crops = []
    for tiles, share in zip(tiles_per_image, shares):
        chosen = np.bincount(rng.integers(0, len(tiles), share), minlength=len(tiles))
        crops += [random_patches(tile, n, rng) for tile, n in zip(tiles, chosen) if n > 0]
    return to_tensor(np.concatenate(crops)[rng.permutation(count)])


def sample_images() -> list[np.ndarray]:
    """The embedded photographs: scikit-learn's two, and scikit-image's when installed."""
    from sklearn.datasets import load_sample_images

    images = [as_rgb(img) for img in load_sample_images().images]
    try:
        import skimage.data
    except ImportError:
        return images
    return images + [as_rgb(getattr(skimage.data, name)()) for name in SKIMAGE_PHOTOGRAPHS]


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
        raise ValueError(
            f"data: {path}:{key} must be uint8 (N, 32, 32, 3), got {images.dtype} {images.shape}"
        )
    return images


def load_datasets(
    data: str | None = None, *, train_size: int = 20000, eval_size: int = 8192, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, eval) patches. ``data``: None (embedded photographs), a folder, or a ``.npz``.

    For a ``.npz`` the last ``eval_size`` images (at most a quarter) are the eval set.
    """
    if data is not None and str(data).endswith(".npz"):
        images = load_npz(data)
        held = min(eval_size, len(images) // 4) or 1
        return to_tensor(images[:-held]), to_tensor(images[-held:])
    images = sample_images() if data is None else load_folder(data)
    train_tiles, eval_tiles = zip(*map(split_tiles, images, range(len(images))))
    if not any(train_tiles) or not any(eval_tiles):
        raise ValueError(f"data: {data} has too few {TILE}x{TILE} tiles for a train/eval split")
    return (
        patches_from_tiles(train_tiles, train_size, seed),
        patches_from_tiles(eval_tiles, eval_size, seed + 1),
    )
