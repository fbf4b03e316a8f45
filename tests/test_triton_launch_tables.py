"""Every Triton kernel with the configs the sm_80 and sm_90 tables choose, run in the interpreter
(configs.emulate): the tiles, chunk counts and split-K segmentation a GPU would launch, not the
interpreter's single big tile, compared with the float64 oracle of wvq_kernels.testing. Shapes
are small and ragged (no multiple of any block), so that masks, several tiles, several D chunks
and both ways of cutting assign's work are all exercised. Inputs are strided (x[:, ::2]): code
sums, moments and soft-assign then run their general-stride variants (which the AOT gate also
compiles), while assign copies them to a unit inner stride (checked at the end)."""

import contextlib
import warnings

import pytest
import torch

import wvq_kernels as wvq
from wvq_kernels._types import SoftAssignStats
from wvq_kernels.testing import (
    check_assignment,
    code_sums_failures,
    moments_failures,
    random_inputs,
    skewed_indices,
    soft_assign_failures,
    strided,
)

pytestmark = pytest.mark.skipif(
    not wvq.available_backends()["triton"], reason=wvq.available_backends()["triton"].reason
)
if wvq.available_backends()["triton"]:
    from wvq_kernels.triton import assign as triton_assign
    from wvq_kernels.triton import configs, histogram, moments, soft_assign

ARCHS = ["sm_80", "sm_90"]
# An SM count per path: a real GPU's (A100, H100) makes these small N split K; one SM makes
# every row block own its rows.
SMS = {"sm_80": 108, "sm_90": 132}
PATHS = ["split-K", "row-owned"]
PRECISIONS = ["ieee", "tf32", "tf32x3", "bf16"]
METRICS = ["l2", "cosine", "dot"]
# Together they reach every row of every assign table: D <= 16, <= 32, and more than 64 (so
# two chunks of the widest BLOCK_D).
DIMS = [8, 24, 72]


def _emulate(arch, path="split-K"):
    return configs.emulate(arch, SMS[arch] if path == "split-K" else 1)


def _assign_config(arch, dim, precision):
    return configs.assign_config(dim, configs.dot_kind(precision), arch)


def _oracle_precision(precision):
    """The interpreter computes tf32 and tf32x3 dots in fp32, so they meet the ieee bound."""
    return "bf16" if precision == "bf16" else "ieee"


@pytest.mark.parametrize("arch", ARCHS)
def test_emulation_serves_the_table_and_ends_with_the_block(arch):
    cpu = torch.device("cpu")
    with _emulate(arch):
        assert configs.device_arch(cpu) == arch and configs.sm_count(cpu) == SMS[arch]
        assert configs.assign_config(72, "bf16", configs.device_arch(cpu)) in [
            config for _, config in configs.ASSIGN_CONFIGS[(arch, "bf16")]
        ]
    assert configs.device_arch(cpu) is None
    assert configs.sm_count(cpu) == configs.INTERPRETER_SM_COUNT
    with pytest.raises(ValueError, match="arch"):
        with configs.emulate("sm_75", 1):
            pass


def test_gpus_without_a_table_fall_back_explicitly():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert configs.table_arch((8, 0)) == "sm_80"
        assert configs.table_arch((8, 9)) == "sm_80"
        assert configs.table_arch((9, 0)) == "sm_90"
    for capability, table in (((10, 0), "sm_90"), ((12, 0), "sm_80")):
        configs._warned_fallbacks.discard(capability)
        with pytest.warns(RuntimeWarning, match=f"sm_{capability[0]}0 has no launch table"):
            assert configs.table_arch(capability) == table
    with pytest.raises(RuntimeError, match="no Triton launch table for sm_75"):
        configs.table_arch((7, 5))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("arch", ARCHS)
def test_assign_meets_the_oracle_with_the_table_configs(arch, precision, path):
    """Each D row of the table, on the path the emulated SM count chooses; metric l2 with the
    fused histogram (the heaviest form)."""
    for dim in DIMS:
        config = _assign_config(arch, dim, precision)
        # Two and a bit row blocks and code tiles.
        x, codebook = random_inputs(2 * config.block_n + 5, 2 * config.block_k + 3, dim, seed=dim)
        x = strided(x)
        with _emulate(arch, path):
            sms = configs.sm_count(x.device)
            splits = triton_assign.split_count(x.shape[0], codebook.shape[0], config, sms)
            indices, distances, counts = triton_assign.launch_assign(
                x, codebook, "l2", precision, True
            )
        assert (splits == 1) == (path == "row-owned")
        check_assignment(x, codebook, indices, distances, "l2", _oracle_precision(precision))
        assert torch.equal(counts, torch.bincount(indices, minlength=codebook.shape[0]))


@pytest.mark.parametrize("metric", ["cosine", "dot"])
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("arch", ARCHS)
def test_assign_other_metrics_meet_the_oracle_with_the_table_configs(arch, precision, metric):
    config = _assign_config(arch, 40, precision)
    x, codebook = random_inputs(config.block_n + 9, 3 * config.block_k + 1, 40, seed=5)
    with _emulate(arch):
        indices, distances, _ = triton_assign.launch_assign(x, codebook, metric, precision, False)
    check_assignment(x, codebook, indices, distances, metric, _oracle_precision(precision))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("arch", ARCHS)
def test_exact_duplicates_go_to_the_smallest_index_wherever_they_sit(arch, precision, path):
    """Issue 13: copies of one code at both edges of a code tile, inside later tiles, in other
    split-K segments and in the last (ragged) column; every metric. D = 64 is where the
    interpreter once gave the last copy a smaller norm."""
    dim = 64
    block_k = _assign_config(arch, dim, precision).block_k
    num_codes = 4 * block_k + 1
    x, codebook = random_inputs(70, num_codes, dim, seed=13)
    generator = torch.Generator().manual_seed(14)
    winner = 3 * torch.randn(dim, generator=generator)
    copies = [5, block_k - 1, block_k, 2 * block_k + 7, 3 * block_k, num_codes - 1]
    codebook[copies] = winner
    x = winner + 0.05 * x
    for metric in METRICS:
        with _emulate(arch, path):
            indices, _, counts = triton_assign.launch_assign(x, codebook, metric, precision, True)
        assert (indices == copies[0]).all(), (metric, indices.unique().tolist())
        assert int(counts[copies[0]]) == 70


def test_norms_of_identical_codes_are_identical_at_every_position():
    """The score's ||c||^2 (the cause of issue 13): 257 and 4100 copies, fp32 and bf16, with the
    interpreter's and both tables' configs."""
    for num_codes, dim in ((257, 64), (4100, 64), (300, 255)):
        code = torch.randn(dim, 1, generator=torch.Generator().manual_seed(dim))
        for dtype in (torch.float32, torch.bfloat16):
            codes_t = code.to(dtype).expand(dim, num_codes).contiguous()
            for arch in (None, *ARCHS):
                norms = triton_assign.code_norms(codes_t, arch)
                assert (norms == norms[0]).all(), (num_codes, dim, dtype, arch)


@pytest.mark.parametrize("arch", ARCHS)
def test_histogram_and_code_sums_with_the_table_configs(arch):
    """Several row blocks of the histogram; code sums over several code and column blocks, with
    a hot code (a long segment) and empty codes."""
    config = configs.rows_config("code_sums", 40, arch)
    num_codes = 3 * config.block_codes + 5
    indices = skewed_indices(
        (2 * configs.rows_config("histogram", 1, arch).block_rows + 7,), num_codes
    )
    x = strided(random_inputs(indices.numel(), 1, 40, seed=2)[0] + 10)
    with _emulate(arch):
        counts = histogram.launch_histogram(indices, num_codes)
        sum_counts, sums = histogram.launch_code_sums(indices, x, num_codes)
    assert torch.equal(counts, torch.bincount(indices, minlength=num_codes))
    problems = code_sums_failures(indices, x, sum_counts, sums)
    assert not problems, problems


@pytest.mark.parametrize("dim", [5, 40])
@pytest.mark.parametrize("arch", ARCHS)
def test_moments_with_the_table_configs(arch, dim):
    """Several programs (partials merged) and, at D = 40, several column blocks."""
    block_rows = configs.rows_config("moments", dim, arch).block_rows
    x = strided(3 * random_inputs(7 * block_rows + 3, 1, dim, seed=dim)[0] + 100)
    with _emulate(arch):
        result = moments.launch_moments(x)
    problems = moments_failures(result, x)
    assert not problems, problems


@pytest.mark.parametrize("dim", [8, 40])
@pytest.mark.parametrize("arch", ARCHS)
def test_soft_assign_scan_and_accumulate_with_the_table_configs(arch, dim):
    """Both accumulate rows (D <= 32 and wider, then two column blocks); several scan code tiles
    and accumulate row segments."""
    scan = configs.soft_assign_config("scan", dim, arch)
    x, codebook = random_inputs(3 * scan.block_n + 1, scan.block_k + 7, dim, seed=dim)
    x = strided(x)
    with _emulate(arch):
        result = soft_assign.launch_soft_assign_stats(x, codebook, 0.5, 0.01)
    problems = soft_assign_failures(x, codebook, 0.5, 0.01, SoftAssignStats(*result))
    assert not problems, problems


@pytest.mark.parametrize("arch", [None, *ARCHS])
def test_issue_13_codes_5_128_and_256_tie_to_5(arch):
    """The reported case: N = 70, K = 257, D = 64, codes 5, 128 and 256 identical; bf16 gave
    code 256 the smallest norm when PyTorch summed them (the interpreter's config: arch None)."""
    generator = torch.Generator().manual_seed(0)
    x, codebook = (
        torch.randn(70, 64, generator=generator),
        torch.randn(257, 64, generator=generator),
    )
    winner = 3 * torch.randn(64, generator=generator)
    codebook[[5, 128, 256]] = winner
    x = winner + 0.05 * x
    for metric in METRICS:
        for precision in PRECISIONS:
            with configs.emulate(arch, 4) if arch else contextlib.nullcontext():
                indices, _, _ = triton_assign.launch_assign(x, codebook, metric, precision, False)
            assert (indices == 5).all(), (metric, precision, indices.unique().tolist())


def test_assign_kernels_always_get_unit_inner_strides(monkeypatch):
    """The launch copies strided rows and codes (y.T, x[:, ::2]) to a unit inner stride, the
    only variant of assign_kernel and finish_split_kernel the AOT gate compiles; one column
    passes 1 whatever its stride. The inputs are left as they were."""
    launches = []
    real_wrap = triton_assign.wrap_triton

    def recording_wrap(kernel):
        launcher = real_wrap(kernel)

        class Recorder:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    launches.append((kernel.fn.__name__, dict(zip(kernel.arg_names, args))))
                    return launcher[grid](*args, **kwargs)

                return launch

        return Recorder()

    monkeypatch.setattr(triton_assign, "wrap_triton", recording_wrap)
    for dim in (1, 24):
        rows_t, codes = random_inputs(dim, 1, 150, seed=dim)[0], random_inputs(300, 1, dim)[0]
        x, codebook = rows_t.T, strided(codes)  # (150, D) and (300, D)
        assert x.stride() == (1, 150) and codebook.stride() == (2 * dim, 2)
        before = (x.clone(), codebook.clone())
        for metric in METRICS:
            launches.clear()
            with _emulate("sm_80"):  # 64-code tiles: 3 segments of 300 codes
                indices, distances, _ = triton_assign.launch_assign(
                    x, codebook, metric, "ieee", True, 3
                )
            kernels = {name for name, _ in launches}
            assert {"assign_kernel", "finish_split_kernel"} <= kernels
            for name, arguments in launches:
                if name in ("assign_kernel", "finish_split_kernel"):
                    assert arguments["stride_xd"] == 1 and arguments["stride_cd"] == 1, name
            check_assignment(x, codebook, indices, distances, metric, "ieee")
        assert torch.equal(x, before[0]) and torch.equal(codebook, before[1])
