"""The `wvq` command's package and the library / application split."""

import subprocess
import sys

from wvq_kernels.cli import build_parser, main

LIBRARY_IMPORT = """
import sys
import wvq_kernels, wvq_kernels.nn, wvq_kernels.kmeans, wvq_kernels.losses, wvq_kernels.reporting
loaded = [m for m in sys.modules if m.startswith(("wvq_kernels.vqvae", "wvq_kernels.cli"))]
assert not loaded, loaded
assert "matplotlib" not in sys.modules
"""


def test_importing_the_library_loads_neither_the_application_nor_the_cli_nor_matplotlib():
    subprocess.run([sys.executable, "-c", LIBRARY_IMPORT], check=True)


def test_parser_knows_every_command():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == {"info", "check", "bench", "repro", "train", "diagnose"}
    args = parser.parse_args(["repro", "atomic", "--quick", "--method", "ema"])
    assert args.quick and args.method == ["ema"]


def test_wvq_info_lists_the_backends(capsys):
    assert main(["info"]) == 0
    printed = capsys.readouterr().out
    assert "backends" in printed and "reference  available" in printed
