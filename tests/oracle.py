"""Float64 oracle for assignment, the rounding bounds that the tests allow against it, and the
norm-wise relative error that the soft-assignment tests measure."""

from typing import NamedTuple

import torch
from torch import Tensor

FP32_UNIT_ROUNDOFF = 2.0**-24
BF16_UNIT_ROUNDOFF = 2.0**-8
ORACLE_ROW_BLOCK = 256


class Oracle(NamedTuple):
    """Per row, in float64: the best and second-best distance over all codes, the first code
    reaching the best, and the distance of the code the backend chose."""

    best: Tensor
    second: Tensor
    best_index: Tensor
    chosen: Tensor


def relative_error(got: Tensor, expected: Tensor) -> float:
    """||got - expected|| / ||expected|| in float64 on the CPU; ||got|| when expected is 0."""
    got, expected = got.detach().cpu().double(), expected.detach().cpu().double()
    scale = expected.norm()
    difference = (got - expected).norm()
    return float(difference / scale) if scale > 0 else float(difference)


def distances64(rows: Tensor, codebook: Tensor, metric: str) -> Tensor:
    """All row-to-code distances (N, K) in float64, from the inputs as given."""
    rows, codebook = rows.double(), codebook.double()
    if metric == "l2":
        return (
            rows.square().sum(1, keepdim=True) + codebook.square().sum(1) - 2 * rows @ codebook.T
        )
    if metric == "cosine":
        return 1 - _normalise64(rows) @ _normalise64(codebook).T
    return -(rows @ codebook.T)


def pair_distances64(rows: Tensor, codes: Tensor, metric: str) -> Tensor:
    """Distance of each row to its own code in float64; l2 as a sum of squares, exact near 0."""
    rows, codes = rows.double(), codes.double()
    if metric == "l2":
        return (rows - codes).square().sum(1)
    if metric == "cosine":
        return 1 - (_normalise64(rows) * _normalise64(codes)).sum(1)
    return -(rows * codes).sum(1)


def _normalise64(t: Tensor) -> Tensor:
    norms = t.norm(dim=1, keepdim=True)
    return torch.where(norms > 0, t / norms, torch.zeros_like(t))


def oracle(rows: Tensor, codebook: Tensor, metric: str, chosen_indices: Tensor) -> Oracle:
    """Float64 truth for 2-D rows, block by block so that K = 65536 stays cheap in memory."""
    parts = []
    for start in range(0, rows.shape[0], ORACLE_ROW_BLOCK):
        block = distances64(rows[start : start + ORACLE_ROW_BLOCK], codebook, metric)
        lowest = block.topk(min(2, block.shape[1]), dim=1, largest=False).values
        parts.append((lowest[:, 0], lowest[:, -1], block.argmin(dim=1)))
    empty = rows.new_empty(0, dtype=torch.float64)
    best, second, best_index = (torch.cat(c) for c in zip(*parts)) if parts else (empty,) * 3
    chosen = pair_distances64(rows, codebook[chosen_indices], metric)
    return Oracle(best, second, best_index.long(), chosen)


def score_scale(rows: Tensor, codebook: Tensor, metric: str) -> Tensor:
    """Per row, the magnitude that bounds every score's rounding error: ||x||^2 + max ||c||^2
    (which exceeds ||c||^2 + 2|x.c|), or 2 for cosine, whose operands are unit vectors."""
    if metric == "cosine":
        return torch.full((rows.shape[0],), 2.0, dtype=torch.float64)
    return rows.double().square().sum(1) + codebook.double().square().sum(1).max()


def regret_bound(rows: Tensor, codebook: Tensor, metric: str, precision: str) -> Tensor:
    """Largest regret that rounding alone can explain, per row.

    fp32 scores: a D-term dot product and the norm terms err by at most ~(D + 2) u times the
    scale; regret adds the errors of two codes, and a factor 2 covers cosine's normalisation.
    bf16 scores: rounding each operand by u_bf16 moves a score by ~4 u_bf16 * scale, twice over
    for the regret. Inputs that already are bf16 lose nothing to that rounding, except cosine,
    whose normalised operands are rounded afresh.
    """
    dim = rows.shape[1]
    relative = 4 * (dim + 2) * FP32_UNIT_ROUNDOFF
    rounds_inputs = precision == "bf16" and (rows.dtype != torch.bfloat16 or metric == "cosine")
    if rounds_inputs:
        relative += 9 * BF16_UNIT_ROUNDOFF
    return relative * score_scale(rows, codebook, metric)


def distance_bound(rows: Tensor, chosen_codes: Tensor, metric: str, exact: Tensor) -> Tensor:
    """Error allowed on the reported distance, recomputed in fp32 from the unrounded inputs:
    relative for l2 (a sum of squares has no cancellation), absolute for cosine, relative to
    sum |x_i c_i| for dot. Twice the textbook bound, to stay clear of it."""
    dim = rows.shape[1]
    gamma = 2 * (dim + 3) * FP32_UNIT_ROUNDOFF
    if metric == "l2":
        return gamma * exact.abs() + 1e-30
    if metric == "cosine":
        return torch.full_like(exact, 2 * gamma)
    return gamma * (rows.double() * chosen_codes.double()).abs().sum(1)


def check_assignment(
    x: Tensor, codebook: Tensor, indices: Tensor, distances: Tensor, metric: str, precision: str
) -> Oracle:
    """Assert the properties every backend owes: bounded regret, the float64 argmin wherever it
    is decisive, and the reported distance of the chosen code."""
    rows = x.reshape(-1, x.shape[-1])
    indices, distances = indices.reshape(-1).cpu(), distances.reshape(-1).cpu()
    rows, codebook = rows.cpu(), codebook.cpu()
    assert indices.dtype == torch.int64 and distances.dtype == torch.float32
    assert ((indices >= 0) & (indices < codebook.shape[0])).all()
    truth = oracle(rows, codebook, metric, indices)
    bound = regret_bound(rows, codebook, metric, precision)
    regret = truth.chosen - truth.best
    worst = int((regret - bound).argmax()) if len(regret) else 0
    assert (regret <= bound).all(), f"row {worst}: regret {regret[worst]} > bound {bound[worst]}"
    decisive = truth.second - truth.best > bound
    assert torch.equal(indices[decisive], truth.best_index[decisive])
    error = (distances.double() - truth.chosen).abs()
    allowed = distance_bound(rows, codebook[indices], metric, truth.chosen)
    assert (error <= allowed).all(), f"distance error {error.max()} > {allowed[error.argmax()]}"
    return truth
