"""Prints requirements pinned in pyproject.toml, one per line, so that the shell scripts and the
README's commands never restate a version:

    python3 scripts/pins.py build   # [build-system] requires: the CPU torch and the build tools
    python3 scripts/pins.py cuda    # the CUDA build venv: the same with [tool.wvq] cuda-torch in
                                    # place of the CPU torch, plus the test extra's triton

Needs only the standard library (Python 3.11 for tomllib).
"""

import re
import sys
from pathlib import Path

import tomllib

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()


def requirements(kind: str) -> list[str]:
    with PYPROJECT.open("rb") as f:
        project = tomllib.load(f)
    build = project["build-system"]["requires"]
    if kind == "build":
        return build
    cuda_torch = project["tool"]["wvq"]["cuda-torch"]
    test = project["project"]["optional-dependencies"]["test"]
    return [cuda_torch if _name(r) == "torch" else r for r in build] + [
        r for r in test if _name(r) == "triton"
    ]


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("build", "cuda"):
        sys.exit(__doc__)
    print("\n".join(requirements(sys.argv[1])))
