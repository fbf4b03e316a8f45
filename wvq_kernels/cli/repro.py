"""`wvq repro atomic`: Wasserstein VQ's synthetic experiment beside the published table."""

from __future__ import annotations

import argparse


def add_parser(commands) -> None:
    from wvq_kernels.vqvae.repro import METHODS

    repro_parser = commands.add_parser("repro", help="reproduce a published experiment")
    experiments = repro_parser.add_subparsers(dest="experiment", required=True)
    atomic = experiments.add_parser(
        "atomic", help="Wasserstein-VQ synthetic experiment (K=16,384, d=8, 2,000 steps)"
    )
    atomic.add_argument(
        "--mu",
        type=float,
        nargs="+",
        default=[0.0, 2.0, 4.0],
        help="feature mean shifts (default 0 2 4)",
    )
    atomic.add_argument("--method", nargs="+", choices=METHODS, default=list(METHODS))
    atomic.add_argument("--distribution", choices=("gaussian", "uniform"), default="gaussian")
    atomic.add_argument(
        "--drift",
        action="store_true",
        help="the feature mean moves from 0 to mu during training (NSVQ's case)",
    )
    atomic.add_argument(
        "--quick", action="store_true", help="K=1,024, 60 steps of 4,096 samples: seconds, for CI"
    )
    atomic.add_argument("--seed", type=int, default=12)
    atomic.add_argument("--backend", default="auto")
    atomic.add_argument("--out", default="runs/atomic", help="where JSON and the plot go")
    atomic.set_defaults(handler=run_repro)


def run_repro(args: argparse.Namespace) -> int:
    from wvq_kernels.vqvae import repro

    repro.run_grid(
        args.mu,
        args.method,
        distribution=args.distribution,
        quick=args.quick,
        out_dir=args.out,
        seed=args.seed,
        backend=args.backend,
        drift=args.drift,
    )
    return 0
