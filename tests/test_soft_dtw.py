"""Soft-DTW and its divergence against an independent float64 reference written here (Cuturi & Blondel, 2017)."""

import math

import numpy as np
import pytest
import torch

from hf_dwakd.ops import SoftDTWBand, soft_dtw, soft_dtw_divergence

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (Triton kernel)")
BACKENDS = ["reference", "cpu", pytest.param("triton", marks=requires_cuda)]
GAMMAS = [0.01, 0.1, 1.0, 10.0]


def device_of(backend):
    return "cuda" if backend == "triton" else "cpu"


def sdtw_and_alignment(C, gamma):
    """Value and expected alignment of one cost matrix, float64, straight from the paper's Algorithms 1 and 2."""
    C = np.asarray(C, dtype=np.float64)
    n, m = C.shape
    R = np.full((n + 2, m + 2), np.inf)
    R[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            z = -np.array([R[i - 1, j - 1], R[i - 1, j], R[i, j - 1]]) / gamma
            z_max = z.max()
            R[i, j] = C[i - 1, j - 1] - gamma * (z_max + np.log(np.exp(z - z_max).sum()))
    value = R[n, m]
    C_pad = np.zeros((n + 2, m + 2))
    C_pad[1 : n + 1, 1 : m + 1] = C
    R[:, m + 1] = -np.inf
    R[n + 1, :] = -np.inf
    R[n + 1, m + 1] = value
    E = np.zeros((n + 2, m + 2))
    E[n + 1, m + 1] = 1.0
    for i in range(n, 0, -1):
        for j in range(m, 0, -1):
            a = np.exp((R[i + 1, j] - R[i, j] - C_pad[i + 1, j]) / gamma)
            b = np.exp((R[i, j + 1] - R[i, j] - C_pad[i, j + 1]) / gamma)
            c = np.exp((R[i + 1, j + 1] - R[i, j] - C_pad[i + 1, j + 1]) / gamma)
            E[i, j] = a * E[i + 1, j] + b * E[i, j + 1] + c * E[i + 1, j + 1]
    return value, E[1 : n + 1, 1 : m + 1]


def hard_dtw(C):
    n, m = C.shape
    D = np.full((n + 1, m + 1), np.inf)
    D[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            D[i, j] = C[i - 1, j - 1] + min(D[i - 1, j], D[i, j - 1], D[i - 1, j - 1])
    return D[n, m]


def cosine_cost(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return np.array([[1.0 - u @ v / (np.linalg.norm(u) * np.linalg.norm(v)) for v in b] for u in a])


def ragged_batch(dtype, device="cpu", seed=0):
    generator = torch.Generator().manual_seed(seed)
    cost = torch.rand(5, 9, 7, generator=generator, dtype=torch.float64) * 2
    lengths_x = torch.tensor([9, 4, 1, 6, 2])
    lengths_y = torch.tensor([7, 7, 3, 1, 5])
    return cost.to(device=device, dtype=dtype), lengths_x.to(device), lengths_y.to(device)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_values_and_gradients_match_reference_on_ragged_batch(backend, gamma, dtype):
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("the Triton kernel computes in float32")
    cost, lengths_x, lengths_y = ragged_batch(dtype, device_of(backend))
    cost.requires_grad_(True)
    upstream = torch.tensor([1.0, -0.5, 2.0, 0.3, 1.5], dtype=dtype, device=cost.device)
    values = soft_dtw(cost, gamma, lengths_x, lengths_y, backend=backend)
    (grad,) = torch.autograd.grad((values * upstream).sum(), cost)

    tolerance = 1e-10 if dtype == torch.float64 else 2e-4
    grad = grad.double().cpu()
    for b, (n, m) in enumerate(zip(lengths_x.tolist(), lengths_y.tolist())):
        value, alignment = sdtw_and_alignment(cost[b, :n, :m].detach().double().cpu(), gamma)
        assert values[b].item() == pytest.approx(value, rel=tolerance, abs=tolerance)
        expected = torch.from_numpy(alignment) * upstream[b].item()
        torch.testing.assert_close(grad[b, :n, :m], expected, rtol=tolerance, atol=tolerance)
        assert (grad[b, n:] == 0).all() and (grad[b, :, m:] == 0).all()
    assert grad.dtype == torch.float64 and values.shape == (5,)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_long_ragged_rows_match_reference(backend, dtype):
    """Lengths across several 32-row stripes of the CPU kernel (and several blocks of the GPU one)."""
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("the Triton kernel computes in float32")
    generator = torch.Generator().manual_seed(8)
    cost = torch.rand(4, 75, 41, generator=generator, dtype=torch.float64).to(device_of(backend), dtype)
    cost.requires_grad_(True)
    lengths_x = torch.tensor([75, 33, 64, 1], device=cost.device)
    lengths_y = torch.tensor([41, 17, 1, 40], device=cost.device)
    values = soft_dtw(cost, 0.5, lengths_x, lengths_y, backend=backend)
    (grad,) = torch.autograd.grad(values.sum(), cost)
    tolerance = 1e-9 if dtype == torch.float64 else 2e-4
    for b, (n, m) in enumerate(zip(lengths_x.tolist(), lengths_y.tolist())):
        value, alignment = sdtw_and_alignment(cost[b, :n, :m].detach().double().cpu(), 0.5)
        assert values[b].item() == pytest.approx(value, rel=tolerance)
        torch.testing.assert_close(grad[b, :n, :m].double().cpu(), torch.from_numpy(alignment), rtol=tolerance,
                                   atol=tolerance)
        assert (grad[b, n:] == 0).all() and (grad[b, :, m:] == 0).all()


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_float64(backend):
    cost, lengths_x, lengths_y = ragged_batch(torch.float64)
    cost = cost[:3, :5, :4].contiguous().requires_grad_(True)
    lengths_x, lengths_y = lengths_x[:3].clamp(max=5), lengths_y[:3].clamp(max=4)
    assert torch.autograd.gradcheck(lambda c: soft_dtw(c, 0.7, lengths_x, lengths_y, backend=backend), (cost,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_padded_batch_equals_examples_one_by_one(backend):
    cost, lengths_x, lengths_y = ragged_batch(torch.float32, device_of(backend), seed=1)
    cost.requires_grad_(True)
    values = soft_dtw(cost, 0.5, lengths_x, lengths_y, backend=backend)
    (grad,) = torch.autograd.grad(values.sum(), cost)
    for b, (n, m) in enumerate(zip(lengths_x.tolist(), lengths_y.tolist())):
        alone = cost[b : b + 1, :n, :m].detach().clone().requires_grad_(True)
        value = soft_dtw(alone, 0.5, backend=backend)
        (grad_alone,) = torch.autograd.grad(value.sum(), alone)
        torch.testing.assert_close(values[b], value[0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(grad[b, :n, :m], grad_alone[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_length_example_gives_zero_value_and_gradient(backend):
    cost, _, _ = ragged_batch(torch.float32, device_of(backend))
    cost.requires_grad_(True)
    lengths_x = torch.tensor([0, 3, 9, 0, 2], device=cost.device)
    lengths_y = torch.tensor([4, 0, 7, 0, 2], device=cost.device)
    values = soft_dtw(cost, 1.0, lengths_x, lengths_y, backend=backend)
    (grad,) = torch.autograd.grad(values.sum(), cost)
    assert values[[0, 1, 3]].tolist() == [0.0, 0.0, 0.0]
    assert (grad[[0, 1, 3]] == 0).all() and values[2] > 0 and grad[2].sum() > 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("gamma", [1e-3, 10.0])
def test_extreme_gamma_and_large_costs_stay_finite(backend, gamma):
    generator = torch.Generator().manual_seed(2)
    cost = (torch.rand(2, 12, 10, generator=generator) * 300).to(device_of(backend)).requires_grad_(True)
    values = soft_dtw(cost, gamma, backend=backend)
    (grad,) = torch.autograd.grad(values.sum(), cost)
    assert torch.isfinite(values).all() and torch.isfinite(grad).all()
    for b in range(2):
        exact = hard_dtw(cost[b].detach().double().cpu().numpy())
        # each soft-min lies in [min - gamma log 3, min], and a path has at most n + m - 1 cells
        assert exact - gamma * math.log(3) * 21 - 1e-2 <= values[b].item() <= exact + 1e-2


@pytest.mark.parametrize("backend", ["cpu", pytest.param("triton", marks=requires_cuda)])
def test_lengths_of_two_thousand_are_finite(backend):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2000, 8, generator=generator).to(device_of(backend)).requires_grad_(True)
    y = torch.randn(2, 1500, 8, generator=generator).to(device_of(backend)).requires_grad_(True)
    rows = torch.arange(1, 2001, dtype=torch.float32, device=x.device).expand(2, -1)
    band = SoftDTWBand(center=rows * 0.75, width=torch.full_like(rows, 5.0), penalty=50.0)
    lengths_y = torch.tensor([1500, 1000], device=x.device)
    values = soft_dtw_divergence(x, y, 0.1, lengths_y=lengths_y, band=band, backend=backend)
    values.sum().backward()
    assert torch.isfinite(values).all() and (values > 0).all()
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    assert (y.grad[1, 1000:] == 0).all()


def test_cpu_gradient_has_no_subnormal_numbers():
    """They would slow down every product downstream (the bmm of the cosine cost's backward) many times over."""
    generator = torch.Generator().manual_seed(10)
    x = torch.randn(2, 300, 16, generator=generator, requires_grad=True)
    y = torch.randn(2, 300, 16, generator=generator)
    cost = 1 - torch.nn.functional.cosine_similarity(x[:, :, None], y[:, None], dim=-1)
    (grad,) = torch.autograd.grad(soft_dtw(cost, 0.5, backend="cpu").sum(), cost)
    subnormal = (grad != 0) & (grad.abs() < torch.finfo(torch.float32).tiny)
    assert not subnormal.any() and (grad == 0).any()


def test_autocast_runs_in_float32_and_returns_input_dtype_gradient():
    cost, lengths_x, lengths_y = ragged_batch(torch.bfloat16)
    cost.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        values = soft_dtw(cost, 0.1, lengths_x, lengths_y)
    (grad,) = torch.autograd.grad(values.sum(), cost)
    as_float = cost.detach().float().requires_grad_(True)
    expected = soft_dtw(as_float, 0.1, lengths_x, lengths_y)
    (expected_grad,) = torch.autograd.grad(expected.sum(), as_float)
    assert values.dtype == torch.float32 and grad.dtype == torch.bfloat16
    torch.testing.assert_close(values, expected)
    torch.testing.assert_close(grad, expected_grad.bfloat16())

    x = torch.randn(2, 6, 16, dtype=torch.bfloat16, requires_grad=True)
    y = torch.randn(2, 5, 16, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        divergence = soft_dtw_divergence(x, y, 1.0)
    divergence.sum().backward()
    assert divergence.dtype == torch.float32 and x.grad.dtype == torch.bfloat16
    torch.testing.assert_close(divergence, soft_dtw_divergence(x.detach().float(), y.float(), 1.0))


def expected_divergence(x, y, gamma, band_rows=None):
    """Divergence of one unpadded pair from this file's cosine cost and Soft-DTW; band_rows = (center, width, lam)."""
    cross = cosine_cost(x, y)
    if band_rows is not None:
        center, width, penalty = band_rows
        for i in range(cross.shape[0]):
            for j in range(1, cross.shape[1] + 1):
                if abs(j - center[i]) > width[i]:
                    cross[i, j - 1] += penalty
    def value(C):
        return sdtw_and_alignment(C, gamma)[0]

    return value(cross) - 0.5 * (value(cosine_cost(x, x)) + value(cosine_cost(y, y)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_band", [False, True])
def test_divergence_matches_its_definition(backend, with_band):
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(3, 7, 5, generator=generator, dtype=torch.float64)
    y = torch.randn(3, 9, 5, generator=generator, dtype=torch.float64)
    lengths_x, lengths_y = torch.tensor([7, 3, 1]), torch.tensor([4, 9, 2])
    center = torch.rand(3, 7, generator=generator, dtype=torch.float64) * 9 + 0.5
    width = torch.rand(3, 7, generator=generator, dtype=torch.float64) * 3
    band = SoftDTWBand(center, width, 0.8) if with_band else None
    dtype = torch.float32 if backend == "triton" else torch.float64
    device = device_of(backend)
    values = soft_dtw_divergence(
        x.to(device, dtype), y.to(device, dtype), 0.3, lengths_x.to(device), lengths_y.to(device),
        band=None if band is None else SoftDTWBand(center.to(device), width.to(device), 0.8), backend=backend,
    )
    tolerance = 1e-9 if dtype == torch.float64 else 1e-4
    for b, (n, m) in enumerate(zip(lengths_x.tolist(), lengths_y.tolist())):
        rows = (center[b].tolist(), width[b].tolist(), 0.8) if with_band else None
        expected = expected_divergence(x[b, :n], y[b, :m], 0.3, rows)
        assert values[b].item() == pytest.approx(expected, rel=tolerance, abs=tolerance)


def test_band_adds_its_penalty_exactly_outside_the_band():
    cost_x = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)  # two orthogonal unit rows
    center = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    # row 1 keeps column 1 (|1 - 1| = 0 <= 0.5) and penalises column 2; row 2 penalises nothing (width 1)
    band = SoftDTWBand(center, torch.tensor([[0.5, 1.0]], dtype=torch.float64), 3.0)
    banded = soft_dtw_divergence(cost_x, cost_x, 0.2, band=band, backend="reference")
    plain = soft_dtw_divergence(cost_x, cost_x, 0.2, backend="reference")
    cross = np.array([[0.0, 1.0 + 3.0], [1.0, 0.0]])
    expected_shift = sdtw_and_alignment(cross, 0.2)[0] - sdtw_and_alignment(cross - [[0, 3.0], [0, 0]], 0.2)[0]
    assert plain.item() == pytest.approx(0.0, abs=1e-12)
    assert banded.item() == pytest.approx(expected_shift, rel=1e-12)
    assert expected_shift > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_divergence_of_identical_sequences_is_zero_and_of_different_ones_positive(backend):
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(4, 8, 6, generator=generator).to(device_of(backend))
    y = torch.randn(4, 10, 6, generator=generator).to(device_of(backend))
    lengths_x = torch.tensor([8, 5, 1, 3], device=x.device)
    lengths_y = torch.tensor([10, 2, 4, 9], device=x.device)
    for gamma in GAMMAS:
        same = soft_dtw_divergence(x, x, gamma, lengths_x, lengths_x, backend=backend)
        different = soft_dtw_divergence(x, y, gamma, lengths_x, lengths_y, backend=backend)
        torch.testing.assert_close(same, torch.zeros_like(same), atol=1e-5, rtol=0)
        assert (different > 1e-4).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_divergence_ignores_whatever_padding_holds(backend):
    generator = torch.Generator().manual_seed(9)
    x = torch.randn(2, 6, 4, generator=generator).to(device_of(backend))
    y = torch.randn(2, 5, 4, generator=generator).to(device_of(backend))
    lengths_x, lengths_y = torch.tensor([4, 6], device=x.device), torch.tensor([5, 3], device=x.device)
    clean = soft_dtw_divergence(x, y, 0.5, lengths_x, lengths_y, backend=backend)
    x[0, 4:] = float("nan")
    y[1, 3:] = float("inf")
    x.requires_grad_(True)
    y.requires_grad_(True)
    dirty = soft_dtw_divergence(x, y, 0.5, lengths_x, lengths_y, backend=backend)
    dirty.sum().backward()
    torch.testing.assert_close(dirty, clean)
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    assert (x.grad[0, 4:] == 0).all() and (y.grad[1, 3:] == 0).all() and (x.grad[0, :4] != 0).any()


def test_divergence_gradcheck_float64_with_band():
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(2, 4, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 5, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    band = SoftDTWBand(torch.tensor([[1.0, 2, 3, 4], [2, 2, 3, 5]]), torch.full((2, 4), 1.0), 0.5)
    lengths_x, lengths_y = torch.tensor([4, 3]), torch.tensor([5, 2])

    def divergence(a, b):
        return soft_dtw_divergence(a, b, 0.5, lengths_x, lengths_y, band=band, backend="cpu")

    assert torch.autograd.gradcheck(divergence, (x, y))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: soft_dtw(torch.rand(3, 4), 1.0), "cost must be"),
        (lambda: soft_dtw(torch.rand(1, 3, 4), 0.0), "gamma must be"),
        (lambda: soft_dtw(torch.rand(1, 3, 4), float("nan")), "gamma must be"),
        (lambda: soft_dtw(torch.rand(2, 3, 4), 1.0, torch.tensor([3, 4])), r"lengths_x must lie in \[0, 3\]"),
        (lambda: soft_dtw(torch.rand(2, 3, 4), 1.0, None, torch.tensor([4])), r"lengths_y must have shape \(2,\)"),
        (lambda: soft_dtw(torch.rand(2, 3, 4), 1.0, torch.tensor([1.0, 2.0])), "lengths_x must be an integer"),
        (lambda: soft_dtw(torch.rand(1, 3, 4), 1.0, backend="numba"), "backend='numba' is unknown"),
        (lambda: soft_dtw(torch.rand(1, 3, 4), 1.0, backend="triton"), "backend='triton' needs CUDA"),
        (lambda: soft_dtw_divergence(torch.rand(2, 3, 4), torch.rand(2, 3, 5), 1.0), "feature size d"),
        (lambda: soft_dtw_divergence(torch.rand(2, 3, 4), torch.rand(2, 5, 4), 1.0, torch.tensor([2, 5])),
         r"lengths_x must lie in \[0, 3\]"),
        (lambda: soft_dtw_divergence(torch.rand(2, 3, 4), torch.rand(2, 5, 4), 1.0,
                                     band=SoftDTWBand(torch.rand(2, 5), torch.rand(2, 3), 1.0)), "band.center"),
        (lambda: soft_dtw_divergence(torch.rand(2, 3, 4), torch.rand(2, 5, 4), 1.0,
                                     band=SoftDTWBand(torch.rand(2, 3), torch.rand(2, 3), -1.0)), "band.penalty"),
    ],
)
def test_bad_input_is_rejected_with_the_field_name(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


@requires_cuda
def test_auto_backend_on_cuda_matches_cpu():
    cost, lengths_x, lengths_y = ragged_batch(torch.float32, seed=7)
    cost = torch.cat([cost] * 8)
    lengths_x, lengths_y = torch.cat([lengths_x] * 8), torch.cat([lengths_y] * 8)
    on_cpu = cost.clone().requires_grad_(True)
    on_gpu = cost.cuda().requires_grad_(True)
    values_cpu = soft_dtw(on_cpu, 0.2, lengths_x, lengths_y)
    values_gpu = soft_dtw(on_gpu, 0.2, lengths_x.cuda(), lengths_y.cuda())
    values_cpu.sum().backward()
    values_gpu.sum().backward()
    torch.testing.assert_close(values_gpu.cpu(), values_cpu, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(on_gpu.grad.cpu(), on_cpu.grad, rtol=1e-4, atol=1e-4)
