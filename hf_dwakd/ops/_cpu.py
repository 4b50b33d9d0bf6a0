"""Soft-DTW on the CPU: Numba kernels, one example per thread, a vectorised wavefront inside each example.

Why Numba: the recursion is a sequential scan that PyTorch can only step one anti-diagonal (one Python call) at a
time; compiled loops run the examples of the batch on all cores and the cells of a wavefront in SIMD lanes.

Layout. The rows of an example are cut into stripes of LANES rows. Inside a stripe, time t sweeps the
anti-diagonals: lane L (1..LANES, row q*LANES + L) handles column c = t - L, so the cells of one time step are
independent and sit side by side in a "skewed" buffer S[t, L] = X(row, t - L). Lane 0 holds the row above the
stripe and lane LANES + 1 the row below. The neighbours of a cell are then S[t-1, L-1] (up), S[t-1, L] (left) and
S[t-2, L-1] (diagonal): shifted vectors, which LLVM turns into SIMD code (with the branch-free exp/log of
`_fastmath`).

The forward pass keeps the skewed R of every stripe (4 bytes a cell). The backward pass recomputes the soft-min
weights of each cell from it, one time step ahead of the expected-alignment recursion of Cuturi & Blondel,
E(i, j) = E(i+1, j) w_up(i+1, j) + E(i, j+1) w_left(i, j+1) + E(i+1, j+1) w_diag(i+1, j+1).
With vectorised exps this measured as fast as storing the three weights of every cell, for a third of the memory.
"""

import numba
import numpy as np
import torch

from hf_dwakd.ops._fastmath import FASTMATH, exp_nonpositive, log_one_to_three

LANES = 32
FLUSH_BELOW = 1e-30  # expected-alignment entries smaller than this (the last cell has 1) become 0
_KERNEL_OPTIONS = {"parallel": True, "fastmath": FASTMATH, "error_model": "numpy", "cache": True}
_HELPER_OPTIONS = {"fastmath": FASTMATH, "error_model": "numpy", "cache": True}


@numba.njit(**_HELPER_OPTIONS)
def _stripe_count(n):
    return (n + LANES - 1) // LANES


@numba.njit(**_HELPER_OPTIONS)
def _time_count(m):
    """Time steps of a stripe, with the margin the backward pass reads past the last cell (t + 2)."""
    return m + LANES + 3


@numba.njit(inline="always", **_HELPER_OPTIONS)
def _unnormalised_weights(up, left, diag, inv_gamma):
    """exp((min - r) / gamma) for the three predecessors r, and that min: the largest weight is exactly 1."""
    smallest = min(up, min(left, diag))
    w_up = exp_nonpositive((smallest - up) * inv_gamma)
    w_left = exp_nonpositive((smallest - left) * inv_gamma)
    w_diag = exp_nonpositive((smallest - diag) * inv_gamma)
    return smallest, w_up, w_left, w_diag


@numba.njit(**_KERNEL_OPTIONS)
def _forward_kernel(cost, gamma, inv_gamma, lengths_x, lengths_y, values, saved_R):
    """saved_R[b, q]: skewed R of stripe q of example b, lanes 0..LANES + 1 (rows above and below included)."""
    inf = cost.dtype.type(np.inf)
    for b in numba.prange(cost.shape[0]):
        n, m = lengths_x[b], lengths_y[b]
        if n == 0 or m == 0:
            values[b] = 0.0
            continue
        times = _time_count(m)
        skewed_cost = np.zeros((times, LANES + 1), dtype=cost.dtype)
        for q in range(_stripe_count(n)):
            first_row = q * LANES
            for lane in range(1, min(LANES, n - first_row) + 1):
                for c in range(1, m + 1):
                    skewed_cost[c + lane, lane] = cost[b, first_row + lane - 1, c - 1]
            R = saved_R[b, q, :times]
            R[:, :] = inf  # boundary column R(i, 0) and everything the recursion does not write
            if q == 0:
                R[0, 0] = 0.0  # the row above the first stripe is the boundary row: R(0, 0) = 0, R(0, c > 0) = +inf
            else:
                above = saved_R[b, q - 1, :times]
                R[: times - LANES, 0] = above[LANES:times, LANES]
            for t in range(2, m + LANES + 1):
                for lane in range(1, LANES + 1):
                    smallest, w_up, w_left, w_diag = _unnormalised_weights(
                        R[t - 1, lane - 1], R[t - 1, lane], R[t - 2, lane - 1], inv_gamma
                    )
                    value = skewed_cost[t, lane] + smallest - gamma * log_one_to_three(w_up + w_left + w_diag)
                    R[t, lane] = value if t > lane else inf  # t <= lane: column 0 (or left of the grid)
            if q > 0:
                above[LANES:times, LANES + 1] = R[: times - LANES, 1]
        last_lane = n - (_stripe_count(n) - 1) * LANES
        values[b] = saved_R[b, _stripe_count(n) - 1, m + last_lane, last_lane]


@numba.njit(**_KERNEL_OPTIONS)
def _backward_kernel(saved_R, inv_gamma, lengths_x, lengths_y, grad_values, grad_cost):
    """Writes grad_values[b] * E into grad_cost, left zero beyond the lengths.

    Far from the alignment path E decays towards the subnormal range, where every product (here, and in the bmm
    that consumes this gradient) gets many times slower; entries below FLUSH_BELOW of the seed are set to 0.
    """
    dtype = saved_R.dtype
    zero, one, flush_below = dtype.type(0.0), dtype.type(1.0), dtype.type(FLUSH_BELOW)
    for b in numba.prange(saved_R.shape[0]):
        n, m = lengths_x[b], lengths_y[b]
        if n == 0 or m == 0:
            continue
        times = _time_count(m)
        E = np.zeros((times, LANES + 2), dtype=dtype)  # skewed E; lane LANES + 1 is the row below
        below = np.zeros(times, dtype=dtype)  # E of lane 1 of the stripe below, by its own time
        # normalised weights of the cells one (next) and two (after) time steps ahead of t, by lane
        next_up, next_left = np.zeros(LANES + 2, dtype=dtype), np.zeros(LANES + 2, dtype=dtype)
        next_diag, after_diag = np.zeros(LANES + 2, dtype=dtype), np.zeros(LANES + 2, dtype=dtype)
        last_stripe = _stripe_count(n) - 1
        seed_lane = n - last_stripe * LANES
        for q in range(last_stripe, -1, -1):
            R = saved_R[b, q, :times]
            rows = min(LANES + 1, n - q * LANES)  # valid lanes, the row below included
            E[:, :] = 0.0
            E[LANES:times, LANES + 1] = below[: times - LANES]
            next_diag[:] = 0.0  # nothing lies two steps past the last cell
            for t in range(m + LANES, 1, -1):
                after_diag[:] = next_diag
                for lane in range(1, LANES + 2):  # weights of the cells at time t + 1
                    _, w_up, w_left, w_diag = _unnormalised_weights(
                        R[t, lane - 1], R[t, lane], R[t - 1, lane - 1], inv_gamma
                    )
                    c = t + 1 - lane
                    valid = (c >= 1) & (c <= m) & (lane <= rows)
                    scale = one / (w_up + w_left + w_diag)
                    next_up[lane] = w_up * scale if valid else zero
                    next_left[lane] = w_left * scale if valid else zero
                    next_diag[lane] = w_diag * scale if valid else zero
                for lane in range(1, LANES + 1):
                    e = (
                        E[t + 1, lane + 1] * next_up[lane + 1]
                        + E[t + 1, lane] * next_left[lane]
                        + E[t + 2, lane + 1] * after_diag[lane + 1]
                    )
                    E[t, lane] = e if e >= flush_below else zero
                if q == last_stripe and t == m + seed_lane:
                    E[t, seed_lane] = one
            for lane in range(1, min(LANES, n - q * LANES) + 1):
                for c in range(1, m + 1):
                    grad_cost[b, q * LANES + lane - 1, c - 1] = grad_values[b] * E[c + lane, lane]
            below[:] = E[:, 1]


def forward(cost, gamma, lengths_x, lengths_y):
    batch, n_rows, n_cols = cost.shape
    values = torch.empty(batch, dtype=cost.dtype)
    saved_R = torch.empty((batch, _stripe_count(n_rows), _time_count(n_cols), LANES + 2), dtype=cost.dtype)
    lengths_x, lengths_y = lengths_x.numpy(), lengths_y.numpy()
    cost = cost.detach().numpy()
    # gamma in the array's own dtype, so float32 input keeps float32 arithmetic inside the kernel
    gamma, inv_gamma = cost.dtype.type(gamma), cost.dtype.type(1.0 / gamma)
    with numba.parallel_chunksize(1):  # hand out examples one by one: ragged lengths make equal shares unequal work
        _forward_kernel(cost, gamma, inv_gamma, lengths_x, lengths_y, values.numpy(), saved_R.numpy())
    return values, (saved_R, inv_gamma, lengths_x, lengths_y, n_rows, n_cols)


def backward(state, grad_values):
    saved_R, inv_gamma, lengths_x, lengths_y, n_rows, n_cols = state
    grad_cost = torch.zeros((saved_R.shape[0], n_rows, n_cols), dtype=saved_R.dtype)
    grad_values = grad_values.to(saved_R.dtype).detach()
    with numba.parallel_chunksize(1):
        _backward_kernel(saved_R.numpy(), inv_gamma, lengths_x, lengths_y, grad_values.numpy(), grad_cost.numpy())
    return grad_cost
