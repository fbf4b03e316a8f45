"""wvq_kernels.testing, the one float64 oracle: it passes the reference's answers, catches
deliberately wrong ones, and its input generators make the cases they promise."""

import pytest
import torch

import wvq_kernels as wvq
from wvq_kernels import reference
from wvq_kernels.testing import (
    AssignmentTruth,
    check_assignment,
    code_sums_failures,
    codebook_with_duplicates,
    distances64,
    hard_inputs,
    moments_failures,
    random_inputs,
    rows_near_and_far,
    skewed_indices,
    soft_assign_failures,
    strided,
    usage_failures,
)

METRICS = ["l2", "cosine", "dot"]


def _reference_assignment(x, codebook, metric, precision="ieee"):
    return wvq.assign(x, codebook, metric=metric, precision=precision, backend="reference")


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("precision", ["ieee", "bf16"])
def test_reference_answers_pass(metric, precision):
    x, codebook = hard_inputs((300,), 1000, 32)
    result = _reference_assignment(x, codebook, metric, precision)
    check_assignment(x, codebook, result.indices, result.distances, metric, precision)


@pytest.mark.parametrize("metric", METRICS)
def test_the_second_best_code_on_a_decisive_row_is_caught(metric):
    x, codebook = random_inputs(200, 500, 16, seed=1)
    result = _reference_assignment(x, codebook, metric)
    truth = AssignmentTruth(x, codebook, metric)
    row = int(truth.decisive("ieee").nonzero()[0, 0])
    scores = distances64(x[row : row + 1], codebook, metric)[0]
    indices = result.indices.clone()
    indices[row] = int(scores.argsort()[1])
    with pytest.raises(AssertionError, match="wrong indices"):
        check_assignment(x, codebook, indices, result.distances, metric, "ieee")


@pytest.mark.parametrize("metric", METRICS)
def test_distances_off_by_one_percent_are_caught(metric):
    x, codebook = random_inputs(200, 500, 16, seed=2)
    result = _reference_assignment(x, codebook, metric)
    with pytest.raises(AssertionError, match="distance"):
        check_assignment(x, codebook, result.indices, 1.01 * result.distances, metric, "ieee")


def test_a_later_copy_of_the_best_code_is_caught():
    """Exact duplicates tie to the smallest index: the copy is the same distance away, so only
    the index check can tell, and it must."""
    x, codebook = random_inputs(50, 100, 8, seed=3)
    codebook[70] = codebook[10]
    x[0] = codebook[10] + 0.01
    result = _reference_assignment(x, codebook, "l2")
    assert result.indices[0] == 10
    indices = result.indices.clone()
    indices[0] = 70
    with pytest.raises(AssertionError, match="first row 0: 70 instead of 10"):
        check_assignment(x, codebook, indices, result.distances, "l2", "ieee")


@pytest.mark.parametrize("metric", ["cosine", "dot"])
def test_an_all_zero_row_must_go_to_code_0(metric):
    x, codebook = random_inputs(10, 40, 8, seed=4)
    x[5] = 0
    result = _reference_assignment(x, codebook, metric)
    indices = result.indices.clone()
    indices[5] = 7
    with pytest.raises(AssertionError, match="first row 5: 7 instead of 0"):
        check_assignment(x, codebook, indices, result.distances, metric, "ieee")


def test_a_far_code_exceeds_the_regret_bound():
    x, codebook = random_inputs(100, 300, 8, seed=5)
    result = _reference_assignment(x, codebook, "l2")
    farthest = distances64(x, codebook, "l2").argmax(dim=1)
    problems = AssignmentTruth(x, codebook, "l2").failures(farthest, result.distances, "ieee")
    assert any("regret" in problem for problem in problems)


@pytest.mark.parametrize("metric", METRICS)
def test_the_bound_leaves_rows_near_their_code_decisive(metric):
    """A bound loose enough to excuse every row would check no index. In ieee nearly every
    row's best different code lies beyond it; in bf16 the worst-case bound excuses close races,
    but rows at or near a code (the first half of hard_inputs) stay decisive."""
    x, codebook = hard_inputs((400,), 4096, 32)
    truth = AssignmentTruth(x, codebook, metric)
    assert truth.decisive("ieee").double().mean() > 0.99
    assert truth.decisive("bf16")[:200].double().mean() > 0.95


def test_bounds_grow_with_the_rounding_of_each_precision():
    x, codebook = random_inputs(10, 20, 16, seed=7)
    truth = AssignmentTruth(x, codebook, "dot")
    bounds = [truth.regret_bound(p) for p in ("ieee", "tf32x3", "bf16")]
    assert (bounds[0] < bounds[1]).all() and (bounds[1] < bounds[2]).all()
    assert (truth.regret_bound("tf32") < bounds[2]).all()


def test_bf16_inputs_need_no_rounding_allowance_but_under_cosine():
    x, codebook = random_inputs(10, 20, 16, dtype=torch.bfloat16, seed=8)
    for metric, rounded in (("l2", False), ("dot", False), ("cosine", True)):
        truth = AssignmentTruth(x, codebook, metric)
        widened = truth.regret_bound("bf16") > truth.regret_bound("ieee")
        assert bool(widened.all()) == rounded, metric


def test_code_sums_one_row_off_is_caught():
    x = torch.randn(1000, 4, generator=torch.Generator().manual_seed(9))
    indices = skewed_indices(1000, 30, seed=9)
    counts, sums = reference.code_sums(indices, x, 30)
    assert not code_sums_failures(indices, x, counts, sums)
    assert code_sums_failures(indices, x, counts, sums + 1e-3 * (counts > 0)[:, None])
    assert code_sums_failures(indices, x, counts.flip(0), sums)


def test_usage_with_a_wrong_perplexity_is_caught():
    counts = torch.tensor([0, 3, 1, 0])
    utilization, perplexity = reference.usage(counts)
    assert not usage_failures((utilization, perplexity), counts)
    assert usage_failures((utilization, perplexity * (1 + 1e-4)), counts)


def test_moments_of_the_uncentred_float32_formula_are_caught():
    """mean 1000, std 3: E[xx^T] - mu mu^T in float32 loses the covariance; the tolerance
    must catch that, and pass the centred float64 reference."""
    x = torch.randn(4000, 6, generator=torch.Generator().manual_seed(10)) * 3 + 1000
    exact = wvq.moments(x, backend="reference")
    assert not moments_failures(exact, x)
    mean = x.mean(0)
    uncentred = x.T @ x / x.shape[0] - torch.outer(mean, mean)
    assert moments_failures((exact.count, exact.mean, uncentred.double()), x)


def test_a_soft_assign_loss_off_by_1e_3_is_caught():
    x, codebook = random_inputs(100, 50, 6, seed=11)
    result = wvq.soft_assign_stats(x, codebook, tau=1.0, backend="reference")
    assert not soft_assign_failures(x, codebook, 1.0, 0.01, result)
    wrong = result._replace(loss=result.loss * (1 + 1e-3))
    problems = soft_assign_failures(x, codebook, 1.0, 0.01, wrong)
    assert len(problems) == 1 and problems[0].startswith("loss: relative error")


def test_codebook_with_duplicates_copies_earlier_codes_the_last_included():
    codebook = codebook_with_duplicates(100, 4, torch.Generator().manual_seed(12))
    distinct = torch.unique(codebook, dim=0)
    assert len(distinct) < 100
    assert (codebook[:99] == codebook[99]).all(dim=1).any()


def test_rows_near_and_far_hold_exact_codes_and_a_zero_row():
    codebook = torch.randn(50, 8, generator=torch.Generator().manual_seed(13))
    x = rows_near_and_far(codebook, 40, torch.Generator().manual_seed(14))
    exact = (x[:, None, :] == codebook[None]).all(dim=2).any(dim=1)
    assert exact[:10].all() and not exact[10:].any()
    assert not x[-1].any() and x[:-1].abs().sum(1).gt(0).all()
    assert x[30:].norm(dim=1).mean() > 2 * x[20:30].norm(dim=1).mean()


def test_strided_keeps_the_values_in_a_non_contiguous_layout():
    x = torch.randn(3, 5, 7)
    view = strided(x)
    assert not view.is_contiguous() and torch.equal(view, x)


def test_hard_inputs_are_strided_on_request_in_the_dtype_asked():
    x, codebook = hard_inputs((3, 70), 300, 12, torch.bfloat16, layout_strided=True)
    assert x.shape == (3, 70, 12) and codebook.shape == (300, 12)
    assert x.dtype == codebook.dtype == torch.bfloat16 and not x.is_contiguous()


def test_skewed_indices_stay_in_range_and_crowd_the_first_codes():
    indices = skewed_indices((20, 500), 1000, dtype=torch.int32, seed=15)
    assert indices.shape == (20, 500) and indices.dtype == torch.int32
    assert 0 <= int(indices.min()) and int(indices.max()) < 1000
    counts = torch.bincount(indices.reshape(-1).long(), minlength=1000)
    assert counts[:100].sum() > 4 * counts[500:600].sum()
