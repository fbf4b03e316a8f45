"""`wvq bench [...]`: the assignment comparison grid of wvq_kernels.bench.assign_grid
(``wvq bench --help`` lists its arguments); `wvq bench --report [...]`: every op's benchmark
written up as bench-results/report.md (wvq_kernels.bench.report, ``wvq bench --report --help``)."""

from __future__ import annotations

import argparse

REPORT_FLAG = "--report"


def add_parser(commands) -> None:
    # Its options belong to the grid or the report, which parse them themselves (so --help
    # shows them).
    commands.add_parser(
        "bench",
        help="comparison benchmark of nearest-code assignment; --report: every op, written up",
        add_help=False,
    ).set_defaults(handler=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    # Imported when they run: the benchmarks are no part of `import wvq_kernels`.
    if REPORT_FLAG in args.runner_args:
        from wvq_kernels.bench import report

        return report.main([arg for arg in args.runner_args if arg != REPORT_FLAG])
    from wvq_kernels.bench import assign_grid

    return assign_grid.main(args.runner_args)
