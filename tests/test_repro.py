"""The synthetic experiment's quick mode through the CLI: it runs, prints the table, writes its
artefacts, and shows the published effect in miniature (Wasserstein VQ keeps the codebook in use
where vanilla VQ collapses under a mean shift)."""

import json

import torch

from wvq_kernels.cli import main
from wvq_kernels.vqvae.repro import AtomicConfig, AtomicQuantizer


def test_quick_atomic_separates_wasserstein_from_vanilla(tmp_path, capsys):
    status = main(
        [
            "repro",
            "atomic",
            "--quick",
            "--mu",
            "4",
            "--method",
            "vanilla",
            "wasserstein",
            "--out",
            str(tmp_path),
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "paper E" in printed and "wasserstein" in printed
    records = {
        r["config"]["method"]: r["final"]
        for r in json.loads((tmp_path / "atomic.json").read_text())
    }
    assert records["wasserstein"]["utilization"] > 0.9
    assert records["vanilla"]["utilization"] < 0.05
    assert records["wasserstein"]["error"] < 0.5 * records["vanilla"]["error"]


def test_quick_drifting_mean_keeps_nsvq_and_wasserstein_in_use(tmp_path, capsys):
    # 60 steps from mean 0 to 3: a far faster drift than the full run's, so NSVQ keeps less.
    status = main(
        [
            "repro",
            "atomic",
            "--quick",
            "--drift",
            "--mu",
            "3",
            "--method",
            "vanilla",
            "wasserstein",
            "nsvq",
            "--out",
            str(tmp_path),
        ]
    )
    assert status == 0
    assert "0→3" in capsys.readouterr().out
    records = {r["config"]["method"]: r for r in json.loads((tmp_path / "atomic.json").read_text())}
    assert all(r["config"]["drift"] and r["published"] is None for r in records.values())
    final = {method: record["final"] for method, record in records.items()}
    assert final["nsvq"]["utilization"] > 0.75
    assert final["wasserstein"]["utilization"] > 0.9
    assert final["vanilla"]["utilization"] < 0.1


def test_atomic_ema_step_is_the_laplace_smoothed_moving_average():
    # One pseudo-count per code and the codes as sums to start with, decay 0.9, eps 1e-5.
    config = AtomicConfig.quick(method="ema", num_codes=64)
    quantizer = AtomicQuantizer(config, torch.Generator().manual_seed(0))
    codes = quantizer.codebook().clone()
    features = torch.randn(500, config.dim, generator=torch.Generator().manual_seed(1))
    quantizer.step(features)
    nearest = torch.cdist(features, codes).argmin(dim=1)
    counts = torch.bincount(nearest, minlength=64).float()
    sums = torch.zeros(64, config.dim).index_add_(0, nearest, features)
    size = 0.9 + 0.1 * counts
    smoothed = (size + 1e-5) / (size.sum() + 64 * 1e-5) * size.sum()
    torch.testing.assert_close(quantizer.codebook(), (0.9 * codes + 0.1 * sums) / smoothed[:, None])
