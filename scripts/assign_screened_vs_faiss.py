"""Exact assignment beyond the fp32 FMA peak (issue 17): ours ieee (screened where the CPU has a
bf16 kernel that pays), ours bf16 and faiss-cpu side by side, and per cell whether the ieee
indices and distances equal, bit for bit, those of the plain fp32 kernel (WVQ_ASSIGN_SCREEN=0).

    .venv/bin/python scripts/assign_screened_vs_faiss.py                 # K = 65,536, 8 cells
    .venv/bin/python scripts/assign_screened_vs_faiss.py --rows 4096 --dims 8

Timings interleave the providers round by round and keep each one's best, so that a machine whose
speed drifts (shared vCPUs) affects all alike; within a round each provider runs a few calls in a
row, because the first call after another provider's meets that library's OpenMP workers still
spinning on the same two vCPUs. faiss gets its blocked BLAS search at every size (its default
threshold, 128,000 rows in faiss 1.15, sends N = 4,096 to a scan ~14x slower at D = 8). Targets
are ratios to faiss: ieee >= 1.5x in every cell, bf16 >= 3x at D >= 32 and >= 2x at D = 8.
An acceptance check rather than an op's benchmark (those are benchmarks/bench_<op>.py on the
shared harness; assign's is the grid of benchmarks/bench_assign.py), so it lives here.
"""

import argparse
import os
import time

import torch

import wvq_kernels as wvq
from wvq_kernels.bench.providers import FAISS_BLAS_THRESHOLD
from wvq_kernels.testing import random_inputs


def _ours(precision: str, screen: str | None):
    def run(x, codebook, _index):
        if screen is None:
            os.environ.pop("WVQ_ASSIGN_SCREEN", None)
        else:
            os.environ["WVQ_ASSIGN_SCREEN"] = screen
        return wvq.assign(x, codebook, precision=precision, backend="cpu")

    return run


def _faiss(x, _codebook, index):
    return index.search(x.numpy(), 1)


CALLS_PER_ROUND = 3


def _best_times(providers: dict, x, codebook, index, rounds: int) -> dict[str, float]:
    best = dict.fromkeys(providers, float("inf"))
    for _ in range(rounds):
        for name, run in providers.items():
            for _ in range(CALLS_PER_ROUND):
                start = time.perf_counter()
                run(x, codebook, index)
                best[name] = min(best[name], time.perf_counter() - start)
    return best


def _bitwise_equal(x, codebook) -> bool:
    plain = _ours("ieee", "0")(x, codebook, None)
    screened = _ours("ieee", None)(x, codebook, None)
    return torch.equal(plain.indices, screened.indices) and torch.equal(
        plain.distances.view(torch.int32), screened.distances.view(torch.int32)
    )


def main() -> None:
    import faiss

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codes", type=int, default=65536)
    parser.add_argument("--rows", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--dims", type=int, nargs="+", default=[8, 32, 64, 256])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    faiss.cvar.distance_compute_blas_threshold = FAISS_BLAS_THRESHOLD
    providers = {
        "faiss": _faiss,
        "ieee": _ours("ieee", None),
        "bf16": _ours("bf16", None),
        "ieee-plain": _ours("ieee", "0"),
    }
    print(f"K = {args.codes}, {args.threads} threads, CPU ISA {torch.ops.wvq.cpu_isa()}")
    print("    N    D   faiss ms  ieee ms (x faiss)  bf16 ms (x faiss)  plain ms  bitwise")
    for rows in args.rows:
        for dim in args.dims:
            x, codebook = random_inputs(rows, args.codes, dim, seed=rows + dim)
            index = faiss.IndexFlatL2(dim)
            index.add(codebook.numpy())
            t = _best_times(providers, x, codebook, index, args.rounds)
            equal = "equal" if _bitwise_equal(x, codebook) else "DIFFERENT"
            print(
                f"{rows:5d} {dim:4d} {t['faiss'] * 1e3:10.1f} {t['ieee'] * 1e3:8.1f} "
                f"({t['faiss'] / t['ieee']:4.2f}x) {t['bf16'] * 1e3:9.1f} "
                f"({t['faiss'] / t['bf16']:4.2f}x) {t['ieee-plain'] * 1e3:9.1f}  {equal}",
                flush=True,
            )


if __name__ == "__main__":
    main()
