"""Lloyd's k-means on the fused ops: each iteration is one `assign` (no N×K matrix) and one
deterministic `code_sums`, so it runs at K = 65,536 in O(N + K·D) memory.

What faiss's ``Kmeans`` users expect is here too: k-means++ and k-means|| initialisation,
empty clusters re-seeded by splitting large ones, the objective of every iteration and a
progress line on long runs. Every random choice is drawn from one ``torch.Generator`` seeded
with ``seed`` (or, for k-means||'s per-row coin flips, a counter-based hash of the seed and the
row's global index), and every weight it is drawn with is an exact integer: so a run spread
over ranks makes exactly the choices one process makes on the rows concatenated in rank order.
"""

from __future__ import annotations

import sys
import time
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from . import _trusted as kernels
from . import _validation as check
from . import distributed
from ._backends import resolve_backend

__all__ = ["INITS", "KMeansResult", "kmeans", "kmeans_fit"]

INITS = ("random", "kmeans++", "kmeans||")
# Relative offset between the two halves of a split cluster (faiss uses the same 1/1024).
SPLIT_EPSILON = 1.0 / 1024
# k-means||: sampling rounds after the first centre, and expected candidates per round as a
# multiple of num_codes (Bahmani et al. find 2 to 5 rounds of 2K enough; Spark uses 2 and 2K).
PARALLEL_ROUNDS = 2
OVERSAMPLING = 2.0
# k-means||'s last step draws the K centres among the candidates in this many batches.
CANDIDATE_BATCHES = 64
# Integer weights stay below 2^62 in total, so their sums are exact in int64.
_WEIGHT_BITS = 62
# prune=None prunes from this many codes on: with fewer, a plain scan of a row costs less than
# the bookkeeping of its bounds.
PRUNE_MIN_CODES = 2048
# On a CPU with AMX tiles, whose ieee assign screens the codes, the plain step beats the pruned
# one's unscreened k = 2 scans unless D is small and the clusters hold few rows (so that few
# codes move late in a run): prune=None prunes there only up to these. Measured pruned / plain
# time at 10 iterations, D = 8: 0.49 (N = 4 K = 262,144) and 0.61 (N = 4 K = 65,536), but 1.24
# (N = 16 K = 262,144) and 1.56 (N = 16 K = 65,536); 1.01 at D = 32 and 1.23 at D = 64 (N = 4 K).
AMX_PRUNE_MAX_DIM = 16
AMX_PRUNE_MAX_ROWS_PER_CODE = 4
# prune: when more than this share of the codes moved, scanning them costs about a full scan.
MOVED_SHARE = 0.5
# A float32 distance rounded from a double sum of D squares is within 2^-24 (1 + D 2^-29) of it
# relative, plus half a subnormal: twice that covers it and the double arithmetic on the bounds.
_REPORTED_UNIT = 2.0**-22
# progress=None shows progress on a terminal when 2·N·K·D·iters reaches this many FLOPs
# (about ten seconds or more on a 2-core CPU).
_LONG_RUN_FLOP = 1e12


class KMeansResult(NamedTuple):
    """What :func:`kmeans_fit` returns.

    codebook: float32 (K, D), the centroids after the last update (and split).
    objective: float64 (iters,), faiss's ``obj``: the sum over every row (of every rank) of
        the squared distance to its code at each iteration's assignment step, summed in float64.
    counts: int64 (K,), the rows per code at the last assignment step (zeros when iters = 0).
    splits: how many empty clusters were re-seeded by splitting, over the whole run.
    """

    codebook: Tensor
    objective: Tensor
    counts: Tensor
    splits: int


def kmeans(
    x: Tensor,
    num_codes: int,
    iters: int = 10,
    *,
    seed: int = 0,
    init: str = "random",
    init_codebook: Tensor | None = None,
    split_empty: bool = True,
    prune: bool | None = None,
    precision: str = "auto",
    progress: bool | None = None,
    process_group=None,
    backend: str = "auto",
) -> Tensor:
    """The codebook of :func:`kmeans_fit` (same arguments): float32 (num_codes, D)."""
    return kmeans_fit(
        x,
        num_codes,
        iters,
        seed=seed,
        init=init,
        init_codebook=init_codebook,
        split_empty=split_empty,
        prune=prune,
        precision=precision,
        progress=progress,
        process_group=process_group,
        backend=backend,
    ).codebook


def kmeans_fit(
    x: Tensor,
    num_codes: int,
    iters: int = 10,
    *,
    seed: int = 0,
    init: str = "random",
    init_codebook: Tensor | None = None,
    split_empty: bool = True,
    prune: bool | None = None,
    precision: str = "auto",
    progress: bool | None = None,
    process_group=None,
    backend: str = "auto",
) -> KMeansResult:
    """Fits num_codes centroids to the rows of `x` (..., D), of any floating-point dtype
    (float64 is rounded to float32 once; half dtypes convert exactly), by `iters` Lloyd
    iterations; returns a :class:`KMeansResult` (codebook, per-iteration objective, counts).

    init: where the centroids start (ignored when `init_codebook` (num_codes, D) is given,
    e.g. the initial centroids of another library):
      - ``"random"``: distinct rows drawn uniformly (with replacement when N < num_codes).
        Free; the default.
      - ``"kmeans++"``: D² sampling (Arthur & Vassilvitskii): each next centre is a row drawn
        with probability proportional to its squared distance to the nearest centre so far.
        Exact but sequential: num_codes passes over the rows (N·K·D in all, and a few
        collectives per centre across ranks), so use it for K up to a few thousand.
      - ``"kmeans||"``: k-means|| (Bahmani et al.): PARALLEL_ROUNDS rounds in which every row
        joins the candidates with probability OVERSAMPLING·K·d²/Σd² (about 2K rows a round),
        each round one fused ``assign`` of the rows against the new candidates; then one more
        ``assign`` against all ~4K candidates weights each by its rows, and weighted D²
        sampling among them picks the K centres, in CANDIDATE_BATCHES batches of draws
        (sequential k-means++ for K <= 64). The passes over the data cost about as much as 8
        Lloyd iterations and a handful of collectives, whatever the number of ranks; the
        candidate step is local, independent of N and about one Lloyd iteration on ~4K rows
        (measured on 2 cores at N = 262,144, K = 65,536, D = 8: 51 s, about 12 Lloyd
        iterations, for a start objective 8% below random's). Use it for large N and K and
        many ranks.

    split_empty: a code whose cluster is empty after an update is re-seeded, as faiss does, by
    splitting a cluster drawn with probability proportional to its size among those with more
    than one row: the empty code takes a copy of that centre, the two copies move apart by the
    relative offset ±SPLIT_EPSILON (alternating signs over the dimensions) and share its count
    for later draws. With ``split_empty=False`` an empty code keeps its previous position.

    prune: None (the default) prunes where it pays: from PRUNE_MIN_CODES codes on, and on a CPU
    with AMX tiles (whose exact assign screens the codes, so a plain step costs less) only for
    D <= 16 and at most 4 rows per code (AMX_PRUNE_*). When pruning, each step after the first
    scans every row against the codes that moved at the last update only, and against the
    whole codebook only the rows whose bounds cannot prove their nearest code (see
    :class:`_Bounds`); the results are bitwise those of ``prune=False``, which runs every row
    through ``assign`` at every step. Measured at
    N = 262,144, K = 65,536, D = 8 from random rows: 93%, 44%, 17%, 6%, 2% of the codes moved
    at steps 2 to 6, then under 1%, and under 2% of the rows needed the full scan; 10
    iterations took 1.9x less time than unpruned. Keeps 32 bytes a row between steps (the
    row's code, distance, bound, norm and margin) and about as much again during a step:
    O(N), 16 MiB at N = 262,144. On the CPU backend with ieee precision only: the bounds
    reproduce the CPU kernel's reported distances, and bf16's rounding margin is wider than
    most rows' gap between their two nearest codes.

    precision: passed to every assignment step (``"bf16"`` screens with bf16 products; the
    objective is then the sum of those steps' distances).

    progress: one line per iteration on stderr (objective, splits, seconds per iteration), on
    rank 0 of the group only. None: on when stderr is a terminal and the run is long
    (2·N·K·D·iters ≥ 1e12 on this rank).

    With a process group (or torch.distributed initialised; see
    :func:`wvq_kernels.distributed.is_distributed`) `x` is this rank's share of the rows, which
    may be empty on some ranks: every rank gets the same result, the one a single process
    computes on the ranks' rows concatenated in rank order (same `seed`): the initial centroids
    and the splits are the same choices exactly, the centroids differ only by the rounding of
    the summed per-code sums. Every rank must pass the same arguments apart from `x`."""
    rows = _checked_rows(x)
    num_codes = check.check_num_codes(num_codes)
    if iters < 0:
        raise ValueError(f"iters: expected iters >= 0, got {iters}")
    check.check_choice("init", init, INITS)
    check.check_choice("precision", precision, check.PRECISIONS)
    backend = resolve_backend(backend, rows.device)
    check.check_precision(precision, backend, rows.device)
    if init_codebook is not None:
        _check_init_codebook(init_codebook, num_codes, rows)
    shard = _Shard(rows, process_group)
    if shard.total_rows == 0:
        raise ValueError("x: expected at least one row (on some rank), got none")
    generator = torch.Generator().manual_seed(seed)
    if init_codebook is not None:
        codebook = init_codebook.detach().to(rows.device, torch.float32, copy=True)
    else:
        codebook = _INITIALISERS[init](shard, num_codes, generator, precision, backend)
    show = _Progress.wanted(progress, rows, num_codes, iters, shard)
    if prune is None:
        prune = _pruning_pays(shard.total_rows, num_codes, rows.shape[1], backend)
    assigner = _Assigner(rows, prune, precision, backend)
    return _lloyd(shard, codebook, iters, generator, split_empty, assigner, _Progress(show, iters))


def _pruning_pays(total_rows: int, num_codes: int, dim: int, backend: str) -> bool:
    """prune=None's choice (PRUNE_MIN_CODES, and the AMX_PRUNE_* limits where the CPU's ieee
    assign screens on AMX tiles)."""
    if num_codes < PRUNE_MIN_CODES:
        return False
    if backend != "cpu" or torch.ops.wvq.cpu_isa() != "avx512_amx":
        return True
    return dim <= AMX_PRUNE_MAX_DIM and total_rows <= AMX_PRUNE_MAX_ROWS_PER_CODE * num_codes


def _checked_rows(x) -> Tensor:
    check.check_tensor("x", x)
    if not x.is_floating_point():
        raise TypeError(f"x: expected a floating-point dtype, got {x.dtype}")
    check.check_rows("x", x)
    rows = x.detach().reshape(-1, x.shape[-1]).float()
    check.check_finite("x", rows)
    return rows


def _check_init_codebook(init_codebook, num_codes: int, rows: Tensor) -> None:
    check.check_tensor("init_codebook", init_codebook)
    if not init_codebook.is_floating_point():
        raise TypeError(
            f"init_codebook: expected a floating-point dtype, got {init_codebook.dtype}"
        )
    expected = (num_codes, rows.shape[1])
    if tuple(init_codebook.shape) != expected:
        raise ValueError(
            f"init_codebook: expected shape {expected}, got {tuple(init_codebook.shape)}"
        )
    check.check_same_device("x", rows, "init_codebook", init_codebook)
    check.check_finite("init_codebook", init_codebook)


def _lloyd(shard, codebook, iters, generator, split_empty, assigner, progress):
    num_codes = codebook.shape[0]
    backend = assigner.backend
    objective = torch.zeros(iters, dtype=torch.float64)
    counts = torch.zeros(num_codes, dtype=torch.int64, device=codebook.device)
    splits = 0
    for step in range(iters):
        started = time.perf_counter()
        indices, distances = assigner.assign(codebook)
        counts, sums = kernels.code_sums(indices, shard.rows, num_codes, backend=backend)
        objective[step] = shard.sum_float64(distances)
        counts = distributed.all_reduce_histogram(counts, shard.group)
        sums = distributed.all_reduce_code_sums(sums, shard.group)
        filled = counts > 0
        means = sums / counts.clamp_min(1)[:, None].float()
        codebook = torch.where(filled[:, None], means, codebook)
        split = _split_empty_clusters(codebook, counts, generator) if split_empty else 0
        splits += split
        progress.line(step, float(objective[step]), split, time.perf_counter() - started)
    return KMeansResult(codebook, objective, counts, splits)


class _Assigner:
    """The assignment step of Lloyd's: the fused ``assign`` of every row or, with ``prune``
    (CPU backend, ieee precision), :class:`_Bounds`' pruned step, which returns the same."""

    def __init__(self, rows: Tensor, prune: bool, precision: str, backend: str):
        self.rows, self.precision, self.backend = rows, precision, backend
        ieee = check.resolve_precision(precision, rows.dtype) == "ieee"
        self.bounds = _Bounds(rows, backend) if prune and ieee and backend == "cpu" else None

    def assign(self, codebook: Tensor) -> tuple[Tensor, Tensor]:
        """(indices int64 (N,), distances float32 (N,)), as ``assign(rows, codebook)``."""
        if self.bounds is not None:
            return self.bounds.assign(codebook)
        found = kernels.assign(self.rows, codebook, precision=self.precision, backend=self.backend)
        return found.indices, found.distances


class _Bounds:
    """The pruned assignment step: only the codes that moved are scanned, bitwise equal to the
    plain step.

    Per row we keep its code ``a`` and a lower bound L on the true distance to every other
    code. A code whose centroid is bitwise unchanged keeps its distances, so L still bounds it;
    late in a run most clusters keep their rows and their centroids. Each step scans every row
    against the moved codes alone (one fused ``assign(k=2)``), takes a (at its reported
    distance, computed here exactly as the kernel reports it) as a further candidate, and
    decides the row when the best candidate provably beats every other code. The rows it
    cannot decide (their nearest may have changed to a code L covers) get a full ``k=2`` scan,
    which also renews L; the first step is that full scan for every row.

    Why the result is the plain kernel's, bit for bit. Write E for SAFETY times the kernel's
    score rounding bound (``testing.score_error_bound``: every computed score is within E of
    the true squared distance minus |x|^2, whatever the kernel's order of summation) and e for
    _REPORTED_UNIT (|x| + max|c|)^2, which bounds the error of a reported distance (a double
    sum rounded to float32) and of our rounding of the bounds; margin = 2E + e. The kernel
    picks a code b over every other j as soon as true(j) - true(b) > 2E: their computed scores
    are then in the same strict order. A code outside a scan's top two by computed score is at
    least the larger reported distance of the two minus margin away, so every candidate but the
    best, and every code beyond them, is at least (second candidate - margin) away, and the
    unmoved codes at least L^2. A row is decided only when that is more than the best's
    reported distance + margin, so true(j) - true(b) > 2E for every j != b: the plain kernel
    provably picks b, and reports b's distance as we have it. The rare rows a full scan cannot
    decide either (near-ties within 2E) are assigned by the plain kernel itself. The kernel's
    result for a row does not depend on the other rows it runs with, so every row gets exactly
    the plain step's index and distance, and the counts, sums, objective, splits and codebook
    follow. L is stored rounded down (float32), so it stays a lower bound.
    """

    def __init__(self, rows: Tensor, backend: str):
        self.rows, self.backend = rows, backend
        self.row_norms = rows.double().norm(dim=1)
        self.codebook: Tensor | None = None  # the codes the bounds refer to
        self.indices = torch.zeros(rows.shape[0], dtype=torch.int64, device=rows.device)
        self.distances = torch.zeros(rows.shape[0], device=rows.device)
        self.lower = torch.zeros(rows.shape[0], device=rows.device)
        self.margin, self.reach = torch.zeros_like(self.row_norms), -1.0

    def assign(self, codebook: Tensor) -> tuple[Tensor, Tensor]:
        """(indices, distances) of every row, as the plain ``assign`` returns them."""
        margin = self._margin(codebook)
        if self.codebook is None:
            undecided = torch.arange(self.rows.shape[0], device=self.rows.device)
        else:
            undecided = self._scan_moved(codebook, margin)
        self._scan_all(undecided, codebook, margin)
        self.codebook = codebook.clone()
        return self.indices.clone(), self.distances.clone()

    def _margin(self, codebook: Tensor) -> Tensor:
        """Per row, the margin for every codebook whose codes are no longer than self.reach.
        It grows with the longest code alone, so it is recomputed (for 1/64 longer codes, to
        spare the next few steps) only when a code outgrows the reach."""
        # The oracle's rounding model, imported here: `import wvq_kernels` leaves it alone.
        from .testing import FP32_SUBNORMAL, SAFETY, score_error_bound

        longest = float(codebook.double().norm(dim=1).max())
        if longest > self.reach:
            self.reach = float(_up(torch.tensor(longest * (1 + 1 / 64))))
            stand_in = torch.zeros(
                1, codebook.shape[1], dtype=torch.float64, device=self.rows.device
            )
            stand_in[0, 0] = self.reach
            rounding = score_error_bound(self.rows, stand_in, "l2", "ieee", torch.float32)
            span = (self.row_norms + self.reach).square()
            self.margin = 2 * SAFETY * rounding + _REPORTED_UNIT * span + FP32_SUBNORMAL
        return self.margin

    def _scan_moved(self, codebook: Tensor, margin: Tensor) -> Tensor:
        """Decides the rows it can from the moved codes and the bounds (their indices,
        distances and bounds); returns the others."""
        moved_mask = (codebook != self.codebook).any(1)
        moved = moved_mask.nonzero().flatten()
        if moved.numel() > MOVED_SHARE * codebook.shape[0]:
            return torch.arange(self.rows.shape[0], device=self.rows.device)
        # A row whose code kept its place keeps its distance.
        shifted = moved_mask[self.indices].nonzero().flatten()
        codes = codebook[self.indices[shifted]]
        self.distances[shifted] = _reported_distances(self.rows[shifted], codes)
        best = _Candidates(self.distances.double(), self.indices, ~moved_mask[self.indices])
        if moved.numel():
            found = kernels.assign_topk(
                self.rows,
                codebook[moved],
                min(2, moved.numel()),
                precision="ieee",
                backend=self.backend,
            )
            best.offer(found.distances.double(), moved[found.indices])
        # The codes that stayed are at least L away, the moved ones at least second - margin.
        others = torch.minimum(best.second - margin, self.lower.double().square())
        decided = others > best.distance + margin
        self.indices = torch.where(decided, best.index, self.indices)
        self.distances = torch.where(decided, best.distance.float(), self.distances)
        fresh = torch.minimum(self.lower, _root(best.second - margin))
        self.lower = torch.where(decided, fresh, self.lower)
        return (~decided).nonzero().flatten()

    def _scan_all(self, rows: Tensor, codebook: Tensor, margin: Tensor) -> None:
        """Assigns the rows by a full k=2 scan (the plain kernel where it cannot decide) and
        renews their bounds."""
        if rows.numel() == 0:
            return
        found = kernels.assign_topk(
            self.rows[rows],
            codebook,
            min(2, codebook.shape[0]),
            precision="ieee",
            backend=self.backend,
        )
        best = _Candidates(found.distances[:, 0].double(), found.indices[:, 0], None)
        if codebook.shape[0] > 1:
            best.offer(found.distances[:, 1:].double(), found.indices[:, 1:])
        margin = margin[rows]
        decided = best.second - margin > best.distance + margin
        chosen, reported = best.index, best.distance.float()
        near_tie = (~decided).nonzero().flatten()
        if near_tie.numel():
            plain = kernels.assign(
                self.rows[rows[near_tie]], codebook, precision="ieee", backend=self.backend
            )
            chosen[near_tie], reported[near_tie] = plain.indices, plain.distances
        # Where the kernel chose b, the top two's nearest bounds every other code; else the
        # nearest is itself another code.
        bound = torch.where(decided, best.second, best.distance)
        self.indices[rows], self.distances[rows] = chosen, reported
        self.lower[rows] = _root(bound - margin)


class _Candidates:
    """Per row the best code offered so far (reported distance, index) and the second-smallest
    distance over every code offered; ``seeded`` says which rows start with their first code
    (all when None)."""

    def __init__(self, distance: Tensor, index: Tensor, seeded: Tensor | None):
        self.distance = distance if seeded is None else torch.where(seeded, distance, torch.inf)
        self.index = index.clone()
        self.second = torch.full_like(self.distance, torch.inf)

    def offer(self, distances: Tensor, indices: Tensor) -> None:
        """Offers each row's codes (columns sorted by distance, nearest first)."""
        nearest, index = distances[:, 0], indices[:, 0]
        held, held_index = self.distance, self.index
        take = (nearest < held) | ((nearest == held) & (index < held_index))
        runner_up = distances[:, 1] if distances.shape[1] > 1 else torch.inf
        self.second = torch.minimum(
            torch.minimum(self.second, torch.maximum(held, nearest)),
            torch.as_tensor(runner_up, dtype=torch.float64),
        )
        self.distance = torch.where(take, nearest, held)
        self.index = torch.where(take, index, held_index)


def _root(squared: Tensor) -> Tensor:
    """A float32 lower bound on the square root of a double (0 where it is negative)."""
    return _down(squared.clamp_min(0).sqrt())


def _down(values: Tensor) -> Tensor:
    """Float32 values at most ``values`` and at least 0: rounding to nearest errs by at most
    half the spacing, and one step towards 0 moves by at least that much."""
    rounded = values.float().clamp_min(0)
    return torch.nextafter(rounded, torch.zeros_like(rounded))


def _up(values: Tensor) -> Tensor:
    """Float32 values at least ``values`` (see :func:`_down`)."""
    rounded = values.float()
    return torch.nextafter(rounded, torch.full_like(rounded, torch.inf))


def _reported_distances(rows: Tensor, codes: Tensor) -> Tensor:
    """Each row's squared distance to its code as the CPU ``assign`` reports it, bit for bit:
    the squares summed in double in dimension order, rounded once to float32."""
    differences = rows.double() - codes.double()
    total = torch.zeros(rows.shape[0], dtype=torch.float64, device=rows.device)
    for column in differences.square().unbind(1):
        total += column
    return total.float()


def _split_empty_clusters(codebook: Tensor, counts: Tensor, generator: torch.Generator) -> int:
    """Re-seeds every empty code in place by splitting a cluster with more than one row, drawn
    in proportion to its size (sizes updated after each split); returns how many were split.
    Runs on all-reduced counts with the shared generator: identical on every rank."""
    empty = (counts == 0).nonzero().flatten().tolist()
    sizes = counts.cpu().clone()
    signs = torch.ones(codebook.shape[1], device=codebook.device)
    signs[1::2] = -1
    done = 0
    for code in empty:
        donors = torch.where(sizes > 1, sizes, 0)
        if int(donors.sum()) == 0:
            break  # fewer rows than codes: no cluster has a row to give
        donor = _weighted_draw(donors, generator)
        centre = codebook[donor].clone()
        codebook[code] = centre * (1 + SPLIT_EPSILON * signs)
        codebook[donor] = centre * (1 - SPLIT_EPSILON * signs)
        sizes[code] = sizes[donor] // 2
        sizes[donor] -= sizes[code]
        done += 1
    return done


def _weighted_draw(weights: Tensor, generator: torch.Generator) -> int:
    """One index drawn with probability weights[i] / sum, for int64 weights with a positive
    sum below 2^63: exact integer arithmetic, so the same on every machine and rank."""
    return _index_of(weights, _randint(int(weights.sum()), generator))


def _index_of(weights: Tensor, target: int) -> int:
    """The i with sum(weights[:i]) <= target < sum(weights[:i + 1])."""
    return int(torch.searchsorted(weights.cumsum(0), torch.tensor([target]), right=True)[0])


def _randint(high: int, generator: torch.Generator) -> int:
    return int(torch.randint(high, (1,), generator=generator))


class _Shard:
    """This rank's rows and their place in the rank-order concatenation, with the few exact
    collectives the initialisers need; without a group, one process holds all rows."""

    def __init__(self, rows: Tensor, process_group):
        self.rows = rows
        self.group = process_group
        self.distributed = distributed.is_distributed(process_group)
        self.sizes = [rows.shape[0]]
        if self.distributed:
            self.sizes = distributed.all_gather_sizes(rows.shape[0], process_group)
        self.total_rows = sum(self.sizes)
        self.rank = dist.get_rank(process_group) if self.distributed else 0
        self.start = sum(self.sizes[: self.rank])

    def sum_float64(self, values: Tensor) -> Tensor:
        """The sum over every rank's values in float64, partial sums added in rank order."""
        local = values.double().sum().reshape(1, 1)
        if not self.distributed:
            return local[0, 0]
        return distributed.all_reduce_code_sums(local, self.group)[0, 0]

    def gathered_ints(self, value: int) -> list[int]:
        if not self.distributed:
            return [value]
        return distributed.all_gather_sizes(value, self.group)

    def global_max(self, values: Tensor) -> float:
        top = values.max().double() if values.numel() else torch.zeros((), dtype=torch.float64)
        if self.distributed:
            top = top.reshape(1).cpu()
            dist.all_reduce(top, op=dist.ReduceOp.MAX, group=self.group)
        return float(top.reshape(()))

    def fetch(self, picks: Tensor) -> Tensor:
        """The rows at the global indices ``picks`` (in that order), from the ranks holding
        them: only the picked rows travel."""
        mine = (picks >= self.start) & (picks < self.start + self.rows.shape[0])
        local = self.rows[(picks[mine] - self.start).to(self.rows.device)]
        if not self.distributed:
            return local
        # Gathered in rank order, the picked rows come grouped by owner and, within an owner,
        # in pick order: a stable sort of the picks by owner gives where each one lands.
        gathered = distributed.all_gather_rows(local, self.group)
        owner = torch.bucketize(picks, torch.tensor(self.sizes).cumsum(0), right=True)
        order = torch.sort(owner, stable=True).indices
        fetched = torch.empty_like(gathered)
        fetched[order.to(self.rows.device)] = gathered
        return fetched

    def gather(self, local_rows: Tensor) -> Tensor:
        if not self.distributed:
            return local_rows
        return distributed.all_gather_rows(local_rows, self.group)

    def integer_weights(self, values: Tensor) -> Tensor:
        """Non-negative float weights as int64 on a common scale (the global maximum maps to
        2^b, with N·2^b < 2^62), so that sums over rows and ranks are exact."""
        top = self.global_max(values)
        if top == 0:
            return torch.zeros(values.shape, dtype=torch.int64)
        bits = _WEIGHT_BITS - self.total_rows.bit_length()
        return (values.double().cpu() * (2.0**bits / top)).floor().to(torch.int64)

    def weighted_pick(self, weights: Tensor, generator: torch.Generator) -> Tensor:
        """One row of the concatenation drawn with probability weight / total weight (exact
        int64 weights; uniformly when every weight is 0), fetched from its rank: (1, D)."""
        totals = self.gathered_ints(int(weights.sum()))
        if sum(totals) == 0:
            pick = _randint(self.total_rows, generator)
            return self.fetch(torch.tensor([pick]))
        target = _randint(sum(totals), generator)
        owner = _index_of(torch.tensor(totals), target)
        local = self.rows[:0]
        if owner == self.rank:
            index = _index_of(weights, target - sum(totals[:owner]))
            local = self.rows[index : index + 1]
        return self.gather(local)


def _random_init(shard: _Shard, num_codes, generator, precision, backend) -> Tensor:
    """Distinct rows when there are enough; sampling with replacement otherwise."""
    if shard.total_rows >= num_codes:
        picks = torch.randperm(shard.total_rows, generator=generator)[:num_codes]
    else:
        picks = torch.randint(shard.total_rows, (num_codes,), generator=generator)
    return shard.fetch(picks)


def _kmeans_plus_plus_init(shard: _Shard, num_codes, generator, precision, backend) -> Tensor:
    """k-means++ (D² sampling) on the rows of every rank; one pass over the rows per centre."""
    centres = [shard.weighted_pick(torch.ones(shard.rows.shape[0], dtype=torch.int64), generator)]
    nearest = _squared_distances(shard.rows, centres[0])
    for _ in range(1, num_codes):
        centres.append(shard.weighted_pick(shard.integer_weights(nearest), generator))
        nearest = torch.minimum(nearest, _squared_distances(shard.rows, centres[-1]))
    return torch.cat(centres)


def _squared_distances(rows: Tensor, centre: Tensor) -> Tensor:
    # Row by row, so the value of a row does not depend on which rank holds it.
    return (rows - centre).square().sum(1)


def _kmeans_parallel_init(shard: _Shard, num_codes, generator, precision, backend):
    """k-means||: oversampled rounds over the (distributed) rows, then weighted k-means++ on
    the candidates, run identically on every rank."""
    # Imported here: wvq_kernels.nn imports this module.
    from .nn.counter_random import counter_uniform

    round_seed = _randint(2**62, generator)
    candidates = shard.weighted_pick(torch.ones(shard.rows.shape[0], dtype=torch.int64), generator)
    nearest = _nearest_distances(shard.rows, candidates, precision, backend)
    positions = torch.arange(shard.start, shard.start + shard.rows.shape[0])
    for round_index in range(PARALLEL_ROUNDS):
        weights = shard.integer_weights(nearest)
        total = sum(shard.gathered_ints(int(weights.sum())))
        if total == 0:
            break
        # Row i joins with probability min(1, l w_i / total), its coin keyed by its global
        # index: the same coins whichever rank holds the row.
        coins = counter_uniform(torch.tensor(round_seed + round_index), positions)
        chosen = coins * total < OVERSAMPLING * num_codes * weights.double()
        new = shard.gather(shard.rows[chosen.to(shard.rows.device)])
        if new.shape[0]:
            found = _nearest_distances(shard.rows, new, precision, backend)
            nearest = torch.minimum(nearest, found)
            candidates = torch.cat([candidates, new])
    return _recluster(shard, candidates, num_codes, generator, precision, backend)


def _nearest_distances(rows: Tensor, codes: Tensor, precision, backend) -> Tensor:
    return kernels.assign(rows, codes, precision=precision, backend=backend).distances


def _recluster(shard: _Shard, candidates, num_codes, generator, precision, backend) -> Tensor:
    """Weighted k-means++ on the candidates, each weighted by the rows nearest to it."""
    indices = kernels.assign(shard.rows, candidates, precision=precision, backend=backend).indices
    counts = kernels.code_histogram(indices, candidates.shape[0], backend=backend)
    counts = distributed.all_reduce_histogram(counts, shard.group).cpu()
    return _batched_plus_plus(candidates, counts, num_codes, generator, precision, backend)


def _batched_plus_plus(candidates, weights, num_codes, generator, precision, backend) -> Tensor:
    """Weighted D² sampling of num_codes centres among the candidates, in CANDIDATE_BATCHES
    batches: each batch draws up to ceil((num_codes - 1) / CANDIDATE_BATCHES) distinct
    candidates in proportion to weight × squared distance to the centres so far, then one fused
    ``assign`` updates those distances. Sequential k-means++ when num_codes <= the batches,
    and K·M·D work in all, not K sequential passes, at large K. Local: every rank computes it
    on the same candidates and weights, so float weights are as deterministic as integers."""
    centres = [candidates[_weighted_draw(weights, generator)][None]]
    nearest = _nearest_distances(candidates, centres[0], precision, backend)
    batch = -(-(num_codes - 1) // CANDIDATE_BATCHES)
    remaining = num_codes - 1
    while remaining:
        scores = weights.double() * nearest.double().cpu()
        take = min(batch, remaining, int((scores > 0).sum()))
        if take == 0:  # every candidate is a centre already: repeat some, uniformly
            picks = torch.randint(candidates.shape[0], (remaining,), generator=generator)
            centres.append(candidates[picks.to(candidates.device)])
            break
        picks = torch.multinomial(scores, take, replacement=False, generator=generator)
        centres.append(candidates[picks.to(candidates.device)])
        found = _nearest_distances(candidates, centres[-1], precision, backend)
        nearest = torch.minimum(nearest, found)
        remaining -= take
    return torch.cat(centres)


_INITIALISERS = {
    "random": _random_init,
    "kmeans++": _kmeans_plus_plus_init,
    "kmeans||": _kmeans_parallel_init,
}


class _Progress:
    """One stderr line per iteration, when shown."""

    def __init__(self, show: bool, iters: int):
        self.show = show
        self.iters = iters

    @staticmethod
    def wanted(progress, rows: Tensor, num_codes: int, iters: int, shard: _Shard) -> bool:
        if shard.rank != 0:
            return False
        if progress is not None:
            return bool(progress)
        flop = 2.0 * rows.shape[0] * num_codes * rows.shape[1] * iters
        return sys.stderr.isatty() and flop >= _LONG_RUN_FLOP

    def line(self, step: int, objective: float, splits: int, seconds: float) -> None:
        if not self.show:
            return
        width = len(str(self.iters))
        print(
            f"kmeans: iteration {step + 1:>{width}}/{self.iters}  objective {objective:.6e}"
            f"  split {splits}  {seconds:.2f} s",
            file=sys.stderr,
            flush=True,
        )
