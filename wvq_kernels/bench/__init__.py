"""Benchmarks of the wvq ops on one harness: ``harness`` (timing, peak memory, measuring
subprocesses, results as CSV/JSON/PNG, the per-op driver of ``benchmarks/bench_<op>.py``),
``providers`` (nearest-code assignment by ours and its peers) and ``assign_grid`` (the comparison
grid that ``wvq bench`` runs). ``import wvq_kernels`` does not import this package."""
