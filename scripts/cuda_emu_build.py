"""Build the CUDA kernels for the host emulation (csrc/emu/cuda_emu.h) into one shared library.

Every file of <csrc>/cuda is copied to <out>/src/cuda with its kernel launches rewritten
(`k<<<grid, block, smem, stream>>>(args)` becomes
`::wvq_emu::launch("k", k, grid, block, smem, stream)(args)`; `__shared__ T s[n];` a reference
to the block's shared storage, `extern __shared__ T s[];` a pointer to the launch's dynamic
shared memory), keeping every line where it was
(`#line` points diagnostics at the original file). Each .cu is then compiled by g++ as C++20 with
the emulation header force-included and csrc/emu first on the include path, and linked with
csrc/emu/runtime.cpp into <out>/libwvq_cuda_emu.so, which exports the extern "C" launchers of
launchers.h, the emulator's controls (wvq_emu_reset, wvq_emu_fault_message,
wvq_emu_set_schedule) and its self-test kernels (csrc/emu/selftest.cu, wvq_emu_test_*).

The emulation layer always comes from this checkout; the kernels from --csrc (default: this
checkout's csrc; WVQ_EMU_CSRC overrides it), so that other trees can be checked against it;
the library goes to --out (default build/cuda-emu; WVQ_EMU_BUILD overrides it).
A build whose inputs and flags are unchanged is skipped. WVQ_EMU_ASAN=1 adds AddressSanitizer.

    python scripts/cuda_emu_build.py [--csrc DIR] [--out DIR] [--opt -O1] [--extra FLAG ...]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EMU = ROOT / "csrc" / "emu"
LIBRARY = "libwvq_cuda_emu.so"
IDENTIFIER = re.compile(r"[A-Za-z0-9_]")
SHARED = re.compile(r"\b__shared__\b")
ALIGN = re.compile(r"__align__\s*\(\s*(\d+)\s*\)")
DECLARATOR = re.compile(r"(.*?)\s*\b(\w+)\s*((?:\[[^\]]*\]\s*)*)", re.S)


def code_mask(text: str) -> str:
    """The text with comments and string/char literals blanked (newlines kept), so that
    searches see code only while offsets stay those of the original."""
    out = list(text)
    i, n = 0, len(text)
    while i < n:
        if text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
        elif text[i] in "\"'":
            end = i + 1
            while end < n and text[end] != text[i]:
                end += 2 if text[end] == "\\" else 1
            end += 1
        else:
            i += 1
            continue
        for j in range(i, min(end, n)):
            if out[j] != "\n":
                out[j] = " "
        i = end
    return "".join(out)


def _skip_space_back(code: str, i: int) -> int:
    while i > 0 and code[i - 1].isspace():
        i -= 1
    return i


def _match_back(code: str, i: int, open_char: str, close_char: str) -> int:
    """code[i - 1] is close_char: the index of its matching open_char. Parenthesised groups
    are skipped whole, so that `k<(a > b)>` matches."""
    depth = 0
    while i > 0:
        i -= 1
        if code[i] == ")" and close_char != ")":
            i = _match_back(code, i + 1, "(", ")")
        elif code[i] == close_char:
            depth += 1
        elif code[i] == open_char:
            depth -= 1
            if depth == 0:
                return i
    raise ValueError("unbalanced kernel expression before <<<")


def kernel_start(code: str, launch: int) -> int:
    """Where the kernel expression before `<<<` at `launch` starts: a possibly qualified name
    with template arguments, or a parenthesised expression."""
    i = _skip_space_back(code, launch)
    if code[i - 1] == ")":
        return _match_back(code, i, "(", ")")
    if code[i - 1] == ">":
        i = _skip_space_back(code, _match_back(code, i, "<", ">"))
    while True:
        while i > 0 and IDENTIFIER.match(code[i - 1]):
            i -= 1
        j = _skip_space_back(code, i)
        if code[j - 2 : j] != "::":
            return i
        i = _skip_space_back(code, j - 2)


def rewrite(text: str) -> str:
    """Launches and shared memory as the emulator takes them; lines stay in place."""
    code = code_mask(text)
    pieces, position = [], 0
    while (launch := code.find("<<<", position)) >= 0:
        close = code.find(">>>", launch)
        if close < 0:
            raise ValueError(f"<<< without >>> at offset {launch}")
        start = kernel_start(code, launch)
        kernel, config = text[start:launch], text[launch + 3 : close]
        name = " ".join(kernel.split()).replace('"', "'")
        pieces += [text[position:start], f'::wvq_emu::launch("{name}", {kernel}, {config})']
        position = close + 3
    pieces.append(text[position:])
    return rewrite_shared("".join(pieces))


def rewrite_shared(text: str) -> str:
    """`[extern] __shared__ [__align__(n)] T name[dims];` as references to the emulator's
    block-shared storage (a pointer for extern, dynamic shared memory)."""
    code = code_mask(text)
    pieces, position = [], 0
    for match in SHARED.finditer(code):
        start = max(code.rfind(c, 0, match.start()) for c in ";{}") + 1
        end = code.find(";", match.end())
        statement = code[start : end + 1]
        alignment = max([int(a) for a in ALIGN.findall(statement)] or [0])
        prefix = ALIGN.sub("", code[start : match.start()]).split()
        declaration = DECLARATOR.fullmatch(ALIGN.sub("", code[match.end() : end]).strip())
        element = declaration and " ".join(declaration.group(1).split())
        if not element or set(prefix) - {"extern"} or "," in element.split("<")[0]:
            raise ValueError(f"cannot rewrite the shared declaration {statement.strip()!r}")
        name, dims = declaration.group(2), "".join(declaration.group(3).split())
        if "extern" in prefix:
            replacement = f"{element}* const {name} = ::wvq_emu::dynamic_shared_as<{element}>();"
        else:
            replacement = (
                f"auto& {name} = ::wvq_emu::shared_variable<{element}{dims}, {alignment}>([] {{}});"
            )
        indent = len(statement) - len(statement.lstrip())
        pieces += [
            text[position : start + indent],
            replacement + "\n" * statement.lstrip().count("\n"),
        ]
        position = end + 1
    pieces.append(text[position:])
    return "".join(pieces)


# WVQ_EMU_ASAN=1: AddressSanitizer on the kernels and the runtime (the process that loads the
# library must preload libasan, see scripts/cuda_emu.sh --asan).
ASAN = ["-fsanitize=address", "-fno-omit-frame-pointer"]


def compiler_flags(csrc: Path, out: Path, opt: str, extra: list[str]) -> list[str]:
    sanitize = ASAN if os.environ.get("WVQ_EMU_ASAN", "0") not in ("", "0") else []
    return [
        "-std=c++20",
        opt,
        "-g0",
        "-fPIC",
        "-pthread",
        "-Wall",
        "-Wno-unknown-pragmas",
        "-Wno-sign-compare",
        "-include",
        str(EMU / "cuda_emu.h"),
        "-I",
        str(EMU),
        "-I",
        str(out / "src" / "cuda"),
        "-I",
        str(csrc),
        *sanitize,
        *extra,
    ]


def inputs_digest(csrc: Path, flags: list[str]) -> str:
    digest = hashlib.sha256(" ".join(flags).encode())
    for folder in (csrc / "cuda", csrc / "common", EMU):
        for path in sorted(folder.glob("*")):
            if path.is_file():
                digest.update(path.name.encode() + path.read_bytes())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()


def build(csrc: Path, out: Path, opt: str = "-O1", extra: list[str] | None = None) -> Path:
    """Builds (or finds up to date) the emulation library; returns its path."""
    csrc, out = csrc.resolve(), out.resolve()
    flags = compiler_flags(csrc, out, opt, extra or [])
    library, stamp = out / LIBRARY, out / "inputs.sha256"
    digest = inputs_digest(csrc, flags)
    if library.exists() and stamp.exists() and stamp.read_text() == digest:
        return library
    source_dir = out / "src" / "cuda"
    if source_dir.exists():
        shutil.rmtree(source_dir)
    source_dir.mkdir(parents=True)
    units = [EMU / "runtime.cpp"]
    for path in [EMU / "selftest.cu", *sorted((csrc / "cuda").iterdir())]:
        if not path.is_file():
            continue
        target = source_dir / path.name
        target.write_text(f'#line 1 "{path}"\n' + rewrite(path.read_text()))
        if path.suffix == ".cu":
            units.append(target)
    jobs = max(1, min(len(units), os.cpu_count() or 1))
    with ThreadPoolExecutor(jobs) as pool:
        objects = list(pool.map(lambda unit: _compile(unit, out, flags), units))
    temporary = out / (LIBRARY + ".tmp")
    _run(["g++", "-shared", "-pthread", *extra_link(flags), "-o", str(temporary), *objects])
    temporary.replace(library)
    stamp.write_text(digest)
    return library


def extra_link(flags: list[str]) -> list[str]:
    """Sanitizers must be linked as they were compiled."""
    return [flag for flag in flags if flag.startswith("-fsanitize")]


def _compile(unit: Path, out: Path, flags: list[str]) -> str:
    target = out / "obj" / (unit.name + ".o")
    target.parent.mkdir(parents=True, exist_ok=True)
    _run(["g++", *flags, "-x", "c++", "-c", str(unit), "-o", str(target)])
    return str(target)


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}\n{result.stdout}{result.stderr}")
    if result.stderr.strip():
        sys.stderr.write(result.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csrc", type=Path, default=os.environ.get("WVQ_EMU_CSRC", ROOT / "csrc"))
    default_out = os.environ.get("WVQ_EMU_BUILD", ROOT / "build" / "cuda-emu")
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--opt", default="-O1")
    parser.add_argument("--extra", action="append", default=[], help="more g++ flags")
    args = parser.parse_args()
    try:
        print(build(Path(args.csrc), args.out, args.opt, args.extra))
    except (RuntimeError, ValueError) as error:
        sys.exit(f"cuda_emu_build: {error}")


if __name__ == "__main__":
    main()
