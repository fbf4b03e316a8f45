"""`wvq diagnose RUN`: a trained run's utilization beside the ceilings its features allow."""

from __future__ import annotations

import argparse


def add_parser(commands) -> None:
    diagnose = commands.add_parser(
        "diagnose",
        help="a trained run's utilization beside a moment-matched Gaussian codebook "
        "and a codebook of training features (runs/<name>/ceilings.json)",
    )
    diagnose.add_argument("run", help="run directory, e.g. runs/wasserstein")
    diagnose.set_defaults(handler=run_diagnose)


def run_diagnose(args: argparse.Namespace) -> int:
    from wvq_kernels.vqvae.evaluation import diagnose

    diagnose(args.run)
    return 0
