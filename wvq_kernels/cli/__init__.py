"""The ``wvq`` command.

    wvq info           versions, backends (and why one is missing), CPU ISA, threads
    wvq check          every available backend against a float64 oracle; exit 1 on a failure
    wvq bench [...]    assignment against its peers (``wvq bench --help`` lists its arguments)
    wvq repro atomic   Wasserstein VQ's synthetic experiment beside the published table
    wvq train          the reference VQ-VAE on embedded photographs (runs/<name>/)
    wvq diagnose RUN   a trained run's utilization beside the ceilings its features allow

One module per command, each with ``add_parser(commands)``; the application commands (repro,
train, diagnose) import ``wvq_kernels.vqvae`` only when they run or build their options.
"""

from __future__ import annotations

import argparse
import sys

from . import bench, check, diagnose, info, repro, train

COMMANDS = (info, check, bench, repro, train, diagnose)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wvq", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args, rest = parser.parse_known_args(argv)
    if args.command != "bench" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.runner_args = rest
    # The command line as given, for a subcommand that re-launches itself (train --nproc).
    args.argv = argv
    return args.handler(args)
