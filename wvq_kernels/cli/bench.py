"""`wvq bench [...]`: benchmarks/runner.py (``wvq bench --help`` lists its arguments)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

RUNNER_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "runner.py"


def add_parser(commands) -> None:
    # Its options belong to the runner, which parses them itself (so --help shows them).
    commands.add_parser(
        "bench", help="comparison benchmark (benchmarks/runner.py)", add_help=False
    ).set_defaults(handler=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    if not RUNNER_PATH.exists():
        print(f"wvq bench needs the source checkout: {RUNNER_PATH} not found", file=sys.stderr)
        return 2
    spec = importlib.util.spec_from_file_location("wvq_benchmark_runner", RUNNER_PATH)
    runner = importlib.util.module_from_spec(spec)
    # Registered before it runs: dataclasses look their module up in sys.modules.
    sys.modules[spec.name] = runner
    spec.loader.exec_module(runner)
    return runner.main(args.runner_args)
