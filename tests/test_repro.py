"""The synthetic experiment's quick mode through the CLI: it runs, prints the table, writes its
artefacts, and shows the published effect in miniature (Wasserstein VQ keeps the codebook in use
where vanilla VQ collapses under a mean shift)."""
import json

from wvq_kernels.cli import main


def test_quick_atomic_separates_wasserstein_from_vanilla(tmp_path, capsys):
    status = main(["repro", "atomic", "--quick", "--mu", "4", "--method", "vanilla",
                   "wasserstein", "--out", str(tmp_path)])
    assert status == 0
    printed = capsys.readouterr().out
    assert "paper E" in printed and "wasserstein" in printed
    records = {r["config"]["method"]: r["final"] for r in json.loads((tmp_path / "atomic.json").read_text())}
    assert records["wasserstein"]["utilization"] > 0.9
    assert records["vanilla"]["utilization"] < 0.05
    assert records["wasserstein"]["error"] < 0.5 * records["vanilla"]["error"]


def test_quick_drifting_mean_keeps_nsvq_and_wasserstein_in_use(tmp_path, capsys):
    # 60 steps from mean 0 to 3: a far faster drift than the full run's, so NSVQ keeps less.
    status = main(["repro", "atomic", "--quick", "--drift", "--mu", "3", "--method", "vanilla",
                   "wasserstein", "nsvq", "--out", str(tmp_path)])
    assert status == 0
    assert "0→3" in capsys.readouterr().out
    records = {r["config"]["method"]: r for r in json.loads((tmp_path / "atomic.json").read_text())}
    assert all(r["config"]["drift"] and r["published"] is None for r in records.values())
    final = {method: record["final"] for method, record in records.items()}
    assert final["nsvq"]["utilization"] > 0.75
    assert final["wasserstein"]["utilization"] > 0.9
    assert final["vanilla"]["utilization"] < 0.1
