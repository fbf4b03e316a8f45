"""`wvq train --profile`: the parts of a step add up to the step, and the quantizer's fused
ops are among them."""

import numpy as np
import pytest

from wvq_kernels.vqvae import TrainConfig
from wvq_kernels.vqvae.profile import profile_training


@pytest.fixture
def tiny_config(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "tiny.npz", x=images)
    return TrainConfig(
        codebook_size=64, batch_size=8, eval_size=16, hidden=16, data=str(tmp_path / "tiny.npz")
    )


def test_profile_parts_add_up_to_the_step_and_name_the_fused_ops(tiny_config):
    printed = []
    rows = profile_training(tiny_config, steps=2, warmup=1, log=printed.append)
    parts = {row["part"]: row for row in rows}
    assert parts["step"]["share"] == 1.0
    assert sum(row["share"] for row in rows if row["part"] != "step") == pytest.approx(1.0)
    assert {"quantizer: wvq::assign", "quantizer: wvq::moments"} <= parts.keys()
    assert all(row["ms_per_step"] >= 0 for row in rows)
    assert "quantizer forward in total" in printed[0]
