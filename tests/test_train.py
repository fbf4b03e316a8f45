import json

import numpy as np
import pytest

from wvq_kernels.train import TrainConfig, train

ARTEFACTS = ("metrics.json", "metrics.csv", "usage.png", "reconstructions.png", "checkpoint.pt")


@pytest.fixture
def tiny_config(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (256, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "tiny.npz", x=images)
    return TrainConfig(name="tiny", codebook_size=64, steps=40, minutes=1, batch_size=16,
                       eval_every=20, checkpoint_every=20, eval_size=64, hidden=16,
                       data=str(tmp_path / "tiny.npz"), out_dir=str(tmp_path / "runs"))


def test_short_run_raises_utilization_and_writes_artefacts(tiny_config, tmp_path):
    pytest.importorskip("matplotlib")
    history = train(tiny_config, log=lambda _: None)
    assert history[-1]["utilization"] > 0.3
    run_dir = tmp_path / "runs" / "tiny"
    for name in ARTEFACTS:
        assert (run_dir / name).stat().st_size > 0, name
    assert json.loads((run_dir / "metrics.json").read_text())["history"][-1]["step"] == 40


def test_resume_matches_uninterrupted_run(tiny_config, tmp_path):
    pytest.importorskip("matplotlib")
    full = train(tiny_config, log=lambda _: None)
    tiny_config.name, tiny_config.steps = "split", 20
    train(tiny_config, log=lambda _: None)
    tiny_config.steps = 40
    resumed = train(tiny_config, resume=True, log=lambda _: None)
    assert resumed == full
