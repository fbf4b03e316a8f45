import json

import pytest

from wvq_kernels.vqvae import train

ARTEFACTS = (
    "metrics.json",
    "metrics.csv",
    "curve.csv",
    "usage.png",
    "reconstructions.png",
    "checkpoint.pt",
)


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


def test_a_stop_between_evaluations_leaves_no_extra_row_in_the_resumed_run(tiny_config, tmp_path):
    """The run stopped at step 30 reports an evaluation there, but the run resumed to 40 has
    the uninterrupted run's history (evaluations at 20 and 40), in metrics.json too."""
    pytest.importorskip("matplotlib")
    full = train(tiny_config, log=lambda _: None)
    tiny_config.name, tiny_config.steps = "split", 30
    stopped = train(tiny_config, log=lambda _: None)
    assert [row["step"] for row in stopped] == [20, 30]
    tiny_config.steps = 40
    resumed = train(tiny_config, resume=True, log=lambda _: None)
    assert [row["step"] for row in full] == [20, 40]
    assert resumed == full
    runs = tmp_path / "runs"
    expected = json.loads((runs / "tiny" / "metrics.json").read_text())
    actual = json.loads((runs / "split" / "metrics.json").read_text())
    expected["config"]["name"] = "split"
    assert actual == expected


def test_curve_records_loss_and_batch_utilization_every_few_steps_across_a_resume(
    tiny_config, tmp_path
):
    pytest.importorskip("matplotlib")
    tiny_config.curve_every = 5
    train(tiny_config, log=lambda _: None)
    tiny_config.name, tiny_config.steps = "split", 20
    train(tiny_config, log=lambda _: None)
    tiny_config.steps = 40
    train(tiny_config, resume=True, log=lambda _: None)
    curves = [
        json.loads((tmp_path / "runs" / name / "metrics.json").read_text())["curve"]
        for name in ("tiny", "split")
    ]
    assert curves[0] == curves[1]
    assert [row["step"] for row in curves[0]] == list(range(5, 41, 5))
    assert all(row["loss"] > 0 and 0 < row["batch_utilization"] <= 1 for row in curves[0])
    csv_lines = (tmp_path / "runs" / "tiny" / "curve.csv").read_text().splitlines()
    assert csv_lines[0] == "step,stage,loss,batch_utilization" and len(csv_lines) == 9


@pytest.fixture
def nsvq_config(tiny_config):
    tiny_config.name, tiny_config.quantizer, tiny_config.strategy = "nsvq", "nsvq", "nsvq"
    tiny_config.steps, tiny_config.consolidate_steps, tiny_config.adversarial_steps = 24, 12, 12
    tiny_config.eval_every, tiny_config.checkpoint_every = 12, 6
    # Unused codes decay from 1 to 0.99**12 = 0.89 tokens per step by the first epoch end.
    tiny_config.refill_threshold = 0.9
    return tiny_config


def test_nsvq_runs_its_three_stages_and_logs_refills(nsvq_config, tmp_path):
    pytest.importorskip("matplotlib")
    history = train(nsvq_config, log=lambda _: None)
    assert [row["stage"] for row in history] == ["joint", "joint", "consolidate", "adversarial"]
    assert history[-1]["step"] == 48
    metrics = json.loads((tmp_path / "runs" / "nsvq" / "metrics.json").read_text())
    events = metrics["events"]
    # 192 training images in batches of 16: an epoch every 12 steps, refills in two stages.
    assert [e["step"] for e in events] == [12, 24, 36]
    assert {e["stage"] for e in events} == {"joint", "consolidate"}
    assert events[0]["refilled"] > 0
    assert events[0]["tau"] > events[-1]["tau"]


def test_nsvq_resumes_exactly_inside_a_stage(nsvq_config, monkeypatch):
    pytest.importorskip("matplotlib")
    from wvq_kernels.vqvae import loop

    full = train(nsvq_config, log=lambda _: None)
    nsvq_config.name = "interrupted"
    original_step = loop.Trainer.train_step

    def interrupt_after_step_30(self, images, stage):
        if self.step == 30:  # inside the consolidation stage, just after a checkpoint
            raise KeyboardInterrupt
        return original_step(self, images, stage)

    monkeypatch.setattr(loop.Trainer, "train_step", interrupt_after_step_30)
    with pytest.raises(KeyboardInterrupt):
        train(nsvq_config, log=lambda _: None)
    monkeypatch.setattr(loop.Trainer, "train_step", original_step)
    assert train(nsvq_config, resume=True, log=lambda _: None) == full


def test_compare_prints_one_table_of_the_final_evaluations(nsvq_config, tmp_path):
    pytest.importorskip("matplotlib")
    import dataclasses

    from wvq_kernels.vqvae import compare

    standard = [
        dataclasses.replace(nsvq_config, name=q, quantizer=q, strategy="standard")
        for q in ("simvq", "wasserstein")
    ]
    configs = [nsvq_config, *standard]
    printed = []
    rows = compare(configs, log=printed.append)
    table = printed[-2].splitlines()
    assert table[0].split()[:3] == ["quantizer", "strategy", "steps"]
    assert [line.split()[:2] for line in table[2:]] == [
        ["nsvq", "nsvq"],
        ["simvq", "standard"],
        ["wasserstein", "standard"],
    ]
    saved = json.loads((tmp_path / "runs" / "compare.json").read_text())
    assert saved == rows
    for config, row in zip(configs, rows):
        metrics = json.loads((tmp_path / "runs" / config.name / "metrics.json").read_text())
        final = metrics["history"][-1]
        assert {key: row[key] for key in final} == final
    assert [row["step"] for row in rows] == [48, 24, 24]


def test_diagnose_reports_the_runs_own_utilization_beside_the_ceilings(tiny_config, tmp_path):
    pytest.importorskip("matplotlib")
    from wvq_kernels.cli import main
    from wvq_kernels.vqvae import diagnose

    final = train(tiny_config, log=lambda _: None)[-1]
    printed = []
    rows = diagnose(tmp_path / "runs" / "tiny", log=printed.append)
    assert [row["codebook"] for row in rows] == [
        "trained",
        "gaussian",
        "gaussian d/(d+2)",
        "training features",
    ]
    assert {key: rows[0][key] for key in ("utilization", "perplexity")} == {
        key: final[key] for key in ("utilization", "perplexity")
    }
    assert rows[0]["quantization_error"] == pytest.approx(final["quantization_error"], rel=1e-6)
    saved = json.loads((tmp_path / "runs" / "tiny" / "ceilings.json").read_text())
    assert saved == rows
    assert printed[-1].splitlines()[-1].split()[:2] == ["training", "features"]
    assert main(["diagnose", str(tmp_path / "runs" / "tiny")]) == 0


def test_a_gaussian_codebook_misses_clustered_features_that_a_sample_covers():
    import torch

    from wvq_kernels.vqvae.evaluation import utilization_ceilings

    generator = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(6, 8, generator=generator)

    def clustered(n):
        which = torch.randint(6, (n,), generator=generator)
        return centres[which] + 0.05 * torch.randn(n, 8, generator=generator)

    codes = clustered(512)
    rows = {
        row["codebook"]: row
        for row in utilization_ceilings(clustered(20000), clustered(512 * 40), codes)
    }
    # Codes drawn from the features' own density are nearly all hit at 40 tokens per code; the
    # moment-matched Gaussian spreads its codes between the clusters, where no feature falls.
    assert rows["training features"]["utilization"] > 0.9
    assert rows["trained"]["utilization"] > 0.9
    assert rows["gaussian"]["utilization"] < 0.2
    assert rows["gaussian d/(d+2)"]["utilization"] < 0.2


def test_wvq_trains_its_codebook_by_unclipped_sgd_with_a_rate_proportional_to_k(tiny_config):
    import dataclasses

    import torch

    from wvq_kernels.vqvae.config import build_model
    from wvq_kernels.vqvae.loop import build_optimizer

    model = build_model(tiny_config)
    optimizers = build_optimizer(model, tiny_config)
    model_group, codebook_group = optimizers.param_groups
    assert [type(o) for o in optimizers.optimizers] == [torch.optim.Adam, torch.optim.SGD]
    assert codebook_group["params"] == model.quantizer.codebook_parameters()
    assert codebook_group["lr"] == pytest.approx(3.0 * 64 / 65536)
    assert codebook_group["momentum"] == 0.9
    assert codebook_group["max_grad_norm"] is None and model_group["max_grad_norm"] == 1.0

    vanilla = dataclasses.replace(tiny_config, quantizer="vanilla")
    model = build_model(vanilla)
    optimizers = build_optimizer(model, vanilla)
    assert [type(o) for o in optimizers.optimizers] == [torch.optim.Adam]
    assert [group["lr"] for group in optimizers.param_groups] == [1e-3, 0.02]
    assert optimizers.param_groups[1]["params"] == model.quantizer.codebook_parameters()


def test_cli_codebook_lr_overrides_the_quantizers_rate_and_keeps_its_algorithm():
    from wvq_kernels.cli import build_parser
    from wvq_kernels.cli.train import train_config
    from wvq_kernels.vqvae.config import codebook_optimizer

    def config(*argv):
        args = build_parser().parse_args(["train", *argv])
        return train_config(args, args.quantizer)

    assert codebook_optimizer(config()) == ("sgd", pytest.approx(3.0))
    assert codebook_optimizer(config("--codebook-size", "16384")) == ("sgd", pytest.approx(0.75))
    assert codebook_optimizer(config("--codebook-lr", "0.5")) == ("sgd", 0.5)
    assert codebook_optimizer(config("--quantizer", "vanilla")) == ("adam", 0.02)
    assert codebook_optimizer(config("--quantizer", "vanilla", "--codebook-lr", "0.1")) == (
        "adam",
        0.1,
    )


def test_usage_metrics_turns_an_assignment_into_utilization_perplexity_and_error():
    import torch

    import wvq_kernels
    from wvq_kernels.vqvae.evaluation import usage_metrics

    x = torch.tensor([[0.0], [0.0], [1.0], [3.0]])
    codebook = torch.tensor([[0.0], [1.0], [2.0], [5.0]])
    metrics = usage_metrics(wvq_kernels.assign(x, codebook, histogram=True))
    # Codes 0, 0, 1 and 2 (distance 1): three of four codes used, shares 1/2, 1/4, 1/4.
    assert metrics == pytest.approx(
        {"utilization": 0.75, "perplexity": 2**1.5, "quantization_error": 0.25}
    )
