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
