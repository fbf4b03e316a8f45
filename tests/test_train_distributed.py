"""`wvq train` on several processes: DDP on real gloo process groups spawned on the CPU, each
rank training on its share of the global batch, compared with one process on the whole batch.

Spawned ranks save what they hold (model state, evaluation history) and the tests compare the
ranks with each other (bitwise) and with a single-process run (within float tolerance)."""

import copy
import dataclasses
import datetime
import functools
import os
import subprocess
import sys
import tempfile
import time

import pytest
import torch
import torch.distributed as dist
from test_distributed import init_group, spawn

from wvq_kernels.cli.train import without_nproc
from wvq_kernels.vqvae import TrainConfig, evaluate, train
from wvq_kernels.vqvae.config import build_model

pytest.importorskip("matplotlib")

# Ranks build a model and evaluate between collectives: on a loaded 2-vCPU machine one rank can
# fall far behind the others, so the groups wait longer than the collective tests' groups do.
TIMEOUT = datetime.timedelta(minutes=3)


@pytest.fixture
def config(tiny_config):
    """conftest's tiny run, 20 steps with an evaluation and a checkpoint every 10."""
    return dataclasses.replace(tiny_config, steps=20, minutes=5, eval_every=10, checkpoint_every=10)


def train_worker(config: TrainConfig, resume_from: int | None, rank, world, folder) -> None:
    """Trains ``config`` on this rank (first to ``resume_from`` steps then resumed, when given)
    and saves the model state and the evaluation history it ends with."""
    init_group(rank, world, folder, TIMEOUT)
    from wvq_kernels.vqvae.loop import Trainer

    captured = {}
    original_save = Trainer.save_on_main

    def capture(self, path):
        captured["model"] = copy.deepcopy(self.model.state_dict())
        if rank == 0:
            time.sleep(1)  # a slow disk: the other ranks must wait for the checkpoint
        original_save(self, path)

    Trainer.save_on_main = capture
    if resume_from is not None:
        train(dataclasses.replace(config, steps=resume_from), log=lambda _: None)
    history = train(config, resume=resume_from is not None, log=lambda _: None)
    torch.save((captured["model"], history), os.path.join(folder, f"rank{rank}.pt"))
    dist.destroy_process_group()


def run_ranks(config: TrainConfig, world: int, resume_from: int | None = None):
    folder = tempfile.mkdtemp(prefix="wvq-train-dist-")
    spawn(functools.partial(train_worker, config, resume_from), world, folder)
    return [torch.load(os.path.join(folder, f"rank{rank}.pt")) for rank in range(world)]


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def test_two_ranks_hold_the_same_model_and_match_one_process(config):
    ranks = run_ranks(config, 2)
    (state0, history0), (state1, history1) = ranks
    assert_same_state(state0, state1)
    assert history0 == history1
    single = train(config, log=lambda _: None)
    assert [row["step"] for row in history0] == [row["step"] for row in single] == [10, 20]
    for split, whole in zip(history0, single, strict=True):
        assert abs(split["utilization"] - whole["utilization"]) <= 0.02
        assert abs(split["psnr"] - whole["psnr"]) <= 0.5
        assert split["quantization_error"] == pytest.approx(whole["quantization_error"], rel=0.05)


def evaluate_worker(config: TrainConfig, rank, world, folder) -> None:
    init_group(rank, world, folder, TIMEOUT)
    torch.save(evaluate_fixture(config), os.path.join(folder, f"rank{rank}.pt"))
    dist.destroy_process_group()


def evaluate_fixture(config: TrainConfig) -> dict:
    """A freshly built model's metrics over 50 images, the first 19 of them decoded (shares of
    both the decoded and the other images differ between ranks)."""
    model = build_model(config)
    images = torch.rand(50, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    return evaluate(model, images, batch_size=8, psnr_images=19)


@pytest.mark.parametrize("world", [2, 3])
def test_evaluation_over_ranks_gives_the_metrics_of_the_whole_set(config, world):
    folder = tempfile.mkdtemp(prefix="wvq-eval-dist-")
    spawn(functools.partial(evaluate_worker, config), world, folder)
    whole = evaluate_fixture(config)
    for rank in range(world):
        split = torch.load(os.path.join(folder, f"rank{rank}.pt"))
        assert split["utilization"] == whole["utilization"]
        assert split["perplexity"] == pytest.approx(whole["perplexity"], rel=1e-6)
        assert split["quantization_error"] == pytest.approx(whole["quantization_error"], rel=1e-6)
        assert split["psnr"] == pytest.approx(whole["psnr"], abs=1e-4)


def test_a_resumed_two_rank_run_continues_exactly(config):
    (state, history), _ = run_ranks(config, 2)
    config.name = "resumed"
    (resumed_state, resumed_history), _ = run_ranks(config, 2, resume_from=10)
    assert resumed_history == history
    assert_same_state(resumed_state, state)


def test_nsvq_stages_train_on_three_ranks_in_step(config):
    """NSVQ's three stages (frozen encoder, then the adversarial decoder with its discriminator
    outside DDP) with 18 images per global batch, 6 on each of 3 ranks."""
    config = dataclasses.replace(
        config,
        name="nsvq",
        quantizer="nsvq",
        strategy="nsvq",
        batch_size=18,
        steps=8,
        consolidate_steps=4,
        adversarial_steps=4,
        eval_every=8,
    )
    ranks = run_ranks(config, 3)
    for state, history in ranks[1:]:
        assert_same_state(state, ranks[0][0])
        assert history == ranks[0][1]
    assert [row["stage"] for row in ranks[0][1]] == ["joint", "adversarial"]


def test_a_global_batch_that_does_not_split_evenly_is_refused(config):
    folder = tempfile.mkdtemp(prefix="wvq-train-dist-")
    config = dataclasses.replace(config, batch_size=17)
    with pytest.raises(Exception, match="batch_size: expected a multiple of the 2 processes"):
        spawn(functools.partial(train_worker, config, None), 2, folder)


def test_nproc_relaunch_drops_only_its_own_option():
    argv = ["train", "--nproc", "2", "--steps", "3", "--nproc=4", "--name", "x"]
    assert without_nproc(argv) == ["train", "--steps", "3", "--name", "x"]


@pytest.mark.slow
def test_cli_nproc_trains_on_two_processes_and_rank_zero_writes_once(config, tmp_path):
    command = [sys.executable, "-m", "wvq_kernels.cli", "train", "--nproc", "2"]
    options = ["--data", config.data, "--steps", "4", "--codebook-size", "64"]
    options += ["--batch-size", "16", "--out", str(tmp_path / "cli"), "--name", "two"]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        command + options, capture_output=True, text=True, timeout=600, env=env, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    finals = [line for line in done.stdout.splitlines() if line.startswith("final step 4:")]
    assert len(finals) == 1, done.stdout
    assert (tmp_path / "cli" / "two" / "metrics.json").stat().st_size > 0
