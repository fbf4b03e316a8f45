"""`wvq bench [...]`: the assignment comparison grid of wvq_kernels.bench.assign_grid
(``wvq bench --help`` lists its arguments)."""

from __future__ import annotations

import argparse


def add_parser(commands) -> None:
    # Its options belong to the grid, which parses them itself (so --help shows them).
    commands.add_parser(
        "bench", help="comparison benchmark of nearest-code assignment", add_help=False
    ).set_defaults(handler=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    # Imported when it runs: the benchmarks are no part of `import wvq_kernels`.
    from wvq_kernels.bench import assign_grid

    return assign_grid.main(args.runner_args)
