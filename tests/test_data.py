import numpy as np
import pytest
import torch

from wvq_kernels.vqvae import data


def test_npz_loader_splits_and_scales(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "cifar.npz", images=images)
    train, held = data.load_datasets(str(tmp_path / "cifar.npz"), eval_size=8)
    assert train.shape == (32, 3, 32, 32) and held.shape == (8, 3, 32, 32)
    assert train.min() >= -1 and train.max() <= 1
    assert torch.equal(held[0], data.to_tensor(images[32:33])[0])


def test_npz_rejects_wrong_shape(tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        data.load_npz(tmp_path / "bad.npz")


def test_folder_loader(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    # Single-tile images: a quarter of them hold the eval patches.
    for i in range(4):
        pixels = np.random.default_rng(i).integers(0, 256, (64, 72, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
    train, held = data.load_datasets(str(tmp_path), train_size=10, eval_size=6)
    assert train.shape == (10, 3, 32, 32) and held.shape == (6, 3, 32, 32)


def test_tiles_split_every_pixel_once_and_interleave():
    image = np.arange(200 * 300 * 3).reshape(200, 300, 3).astype(np.uint8)
    train_tiles, eval_tiles = data.split_tiles(image)
    # 200 = 3 tiles of 64 and an 8-pixel strip too thin for a patch; 300 = 4 x 64 + 44.
    assert len(train_tiles) + len(eval_tiles) == 3 * 5
    assert 0.15 < len(eval_tiles) / 15 < 0.35
    assert all(min(tile.shape[:2]) >= data.PATCH for tile in train_tiles + eval_tiles)


def test_train_and_eval_patches_never_share_a_pixel():
    height, width = 256, 320
    ids = np.arange(height * width).reshape(height, width)
    image = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    train_tiles, eval_tiles = data.split_tiles(image)
    pixel_ids = [
        {tuple(p) for tile in tiles for p in tile.reshape(-1, 3)}
        for tiles in (train_tiles, eval_tiles)
    ]
    assert not pixel_ids[0] & pixel_ids[1]
    assert len(pixel_ids[0]) + len(pixel_ids[1]) == height * width


def test_embedded_default_mixes_the_photographs():
    pytest.importorskip("sklearn")
    images = data.sample_images()
    assert len(images) >= 2 and all(img.ndim == 3 and img.shape[2] == 3 for img in images)


def test_embedded_default_is_deterministic():
    pytest.importorskip("sklearn")
    first = data.load_datasets(train_size=16, eval_size=8, seed=3)
    second = data.load_datasets(train_size=16, eval_size=8, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert first[0].shape == (16, 3, 32, 32)
