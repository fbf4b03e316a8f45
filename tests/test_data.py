import numpy as np
import pytest
import torch

from wvq_kernels import data


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
    pixels = np.random.default_rng(1).integers(0, 256, (64, 72, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    train, held = data.load_datasets(str(tmp_path), train_size=10, eval_size=6)
    assert train.shape == (10, 3, 32, 32) and held.shape == (6, 3, 32, 32)


def test_patches_come_from_disjoint_regions():
    image = np.arange(40 * 128 * 3, dtype=np.int64).reshape(40, 128, 3).astype(np.uint8)
    train_regions, eval_regions = data.split_columns([image])
    assert train_regions[0].shape[1] + eval_regions[0].shape[1] == 128


def test_embedded_default_is_deterministic():
    pytest.importorskip("sklearn")
    first = data.load_datasets(train_size=16, eval_size=8, seed=3)
    second = data.load_datasets(train_size=16, eval_size=8, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert first[0].shape == (16, 3, 32, 32)
