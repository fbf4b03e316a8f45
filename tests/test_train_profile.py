"""`wvq train --profile`: the parts of a step add up to the step, and the quantizer's fused
ops are among them."""

import pytest

from wvq_kernels.vqvae.profile import profile_training


def test_profile_parts_add_up_to_the_step_and_name_the_fused_ops(tiny_config):
    printed = []
    rows = profile_training(tiny_config, steps=2, warmup=1, log=printed.append)
    parts = {row["part"]: row for row in rows}
    assert parts["step"]["share"] == 1.0
    assert sum(row["share"] for row in rows if row["part"] != "step") == pytest.approx(1.0)
    assert {"quantizer: wvq::assign", "quantizer: wvq::moments"} <= parts.keys()
    assert all(row["ms_per_step"] >= 0 for row in rows)
    assert "quantizer forward in total" in printed[0]
