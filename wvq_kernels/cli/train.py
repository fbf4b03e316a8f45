"""`wvq train`: the reference VQ-VAE on embedded photographs (runs/<name>/)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

# NSVQ's joint stage is shorter than standard training, so that its three stages and their
# evaluations fit in 15 minutes here.
NSVQ_JOINT_MINUTES = 6.0


def add_parser(commands) -> None:
    from wvq_kernels.vqvae.config import QUANTIZER_OPTIONS, STRATEGIES, TrainConfig

    defaults = TrainConfig()
    quantizers = tuple(QUANTIZER_OPTIONS)
    train = commands.add_parser("train", help="train the reference VQ-VAE (runs/<name>/)")
    train.add_argument(
        "--quantizer",
        choices=quantizers,
        help=f"default {defaults.quantizer}; nsvq with --strategy nsvq",
    )
    train.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default=defaults.strategy,
        help="nsvq: joint training with the dense loss and a decaying tau, then "
        "the encoder frozen while the codebook consolidates, then "
        "adversarial refinement of the decoder",
    )
    train.add_argument(
        "--compare",
        nargs="+",
        choices=quantizers,
        metavar="QUANTIZER",
        help="train each of these in turn (same budget) and print one table, "
        "e.g. --compare nsvq simvq wasserstein",
    )
    train.add_argument("--codebook-size", type=int, default=defaults.codebook_size)
    train.add_argument("--steps", type=int, default=defaults.steps, help="at most this many steps")
    train.add_argument(
        "--minutes",
        type=float,
        help=f"stop (evaluate, save) after this much wall time (joint stage; "
        f"default {defaults.minutes}, nsvq {NSVQ_JOINT_MINUTES})",
    )
    train.add_argument(
        "--consolidate-minutes",
        type=float,
        default=defaults.consolidate_minutes,
        help="nsvq: wall time of the frozen-encoder stage",
    )
    train.add_argument(
        "--adversarial-minutes",
        type=float,
        default=defaults.adversarial_minutes,
        help="nsvq: wall time of the adversarial decoder stage",
    )
    train.add_argument("--batch-size", type=int, default=defaults.batch_size)
    train.add_argument(
        "--codebook-lr",
        type=float,
        help="the codebook's learning rate (default: Adam 0.02; W-VQ: SGD, 3.0 x K / 65,536)",
    )
    train.add_argument("--name", help="run directory name (default: the quantizer)")
    train.add_argument(
        "--resume", action="store_true", help="continue from runs/<name>/checkpoint.pt"
    )
    train.add_argument(
        "--data", help="folder of images or CIFAR-style .npz (default: embedded photographs)"
    )
    train.add_argument("--seed", type=int, default=defaults.seed)
    train.add_argument("--out", default=defaults.out_dir)
    train.add_argument(
        "--profile",
        type=int,
        nargs="?",
        const=10,
        metavar="STEPS",
        help="train nothing: profile this many steps (default 10, after 3 warm-up steps) and "
        "print where a step's time goes, the quantizer's fused ops against the model",
    )
    train.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="train on this many processes with DDP (launches torchrun; the same as "
        "`torchrun --nproc-per-node=N -m wvq_kernels.cli train ...`); --batch-size is the "
        "global batch, split between them",
    )
    train.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    from wvq_kernels.vqvae.loop import compare, train
    from wvq_kernels.vqvae.parallel import process_group_from_environment

    if args.nproc < 1:
        raise SystemExit(f"--nproc: expected at least 1, got {args.nproc}")
    if args.profile is not None:
        from wvq_kernels.vqvae.profile import profile_training

        profile_training(train_config(args, args.quantizer), steps=args.profile)
        return 0
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return launch_processes(args.nproc, args.argv)
    with process_group_from_environment():
        if args.compare:
            compare([train_config(args, quantizer) for quantizer in args.compare], log=print)
        else:
            train(train_config(args, args.quantizer), resume=args.resume)
    return 0


def launch_processes(nproc: int, argv: list[str]) -> int:
    """This command again under torchrun on ``nproc`` local processes, without --nproc."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "wvq_kernels.cli",
        *without_nproc(argv),
    ]
    return subprocess.run(command, check=False).returncode


def without_nproc(argv: list[str]) -> list[str]:
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            kept.append(arg)
    return kept


def train_config(args: argparse.Namespace, quantizer: str | None):
    """The TrainConfig of one run: ``quantizer`` (one of --compare's) or --quantizer."""
    from wvq_kernels.vqvae.config import TrainConfig

    # NSVQ's quantizer goes with NSVQ's stages, whichever way it is asked for.
    quantizer = quantizer or ("nsvq" if args.strategy == "nsvq" else TrainConfig.quantizer)
    strategy = "nsvq" if quantizer == "nsvq" else args.strategy
    name = args.name if args.name and not args.compare else quantizer
    default_minutes = NSVQ_JOINT_MINUTES if strategy == "nsvq" else TrainConfig.minutes
    return TrainConfig(
        name=name,
        quantizer=quantizer,
        strategy=strategy,
        codebook_size=args.codebook_size,
        steps=args.steps,
        minutes=args.minutes or default_minutes,
        consolidate_minutes=args.consolidate_minutes,
        adversarial_minutes=args.adversarial_minutes,
        batch_size=args.batch_size,
        codebook_lr=args.codebook_lr,
        data=args.data,
        seed=args.seed,
        out_dir=args.out,
    )
