"""Soft-DTW on the CPU: Numba kernels, one example per thread, a vectorised wavefront inside each example.

Why Numba: the recursion is a sequential scan that PyTorch can only step one anti-diagonal (one Python call) at a
time; compiled loops run the examples of the batch on all cores and the cells of a wavefront in SIMD lanes.

Layout. The rows of an example are cut into stripes of LANES rows. Inside a stripe, time t sweeps the
anti-diagonals: lane L (1..LANES, row q*LANES + L) handles column c = t - L, so the cells of one time step are
independent and sit side by side in a "skewed" buffer S[t, L] = X(row, t - L). Lane 0 holds the row above the
stripe. The three neighbours of a cell are then S[t-1, L-1] (up), S[t-1, L] (left), S[t-2, L-1] (diagonal): plain
shifted vectors, which LLVM turns into SIMD code (with the branch-free exp/log of `_fastmath`).

The forward pass stores the three soft-min weights of every cell in that skewed layout, zero outside the valid
cells, so the backward pass (the expected alignment of Cuturi & Blondel) is a weighted sum with no exp and no log:
E(i, j) = E(i+1, j) w_up(i+1, j) + E(i, j+1) w_left(i, j+1) + E(i+1, j+1) w_diag(i+1, j+1).
"""

import numba
import numpy as np
import torch

from hf_dwakd.ops._fastmath import FASTMATH, exp_nonpositive, log_one_to_three

LANES = 32
UP, LEFT, DIAG = 0, 1, 2
_KERNEL_OPTIONS = {"parallel": True, "fastmath": FASTMATH, "error_model": "numpy", "cache": True}


@numba.njit(cache=True)
def _stripe_count(n):
    return (n + LANES - 1) // LANES


@numba.njit(cache=True)
def _time_count(m):
    """Time steps of a stripe, with the margin the backward pass reads past the last cell (t + 2)."""
    return m + LANES + 3


@numba.njit(**_KERNEL_OPTIONS)
def _forward_kernel(cost, gamma, inv_gamma, lengths_x, lengths_y, values, weights):
    """weights[b, q, k, t, L]: weight k (up, left, diag) of lane L at time t of stripe q; lane LANES + 1 repeats
    lane 1 of stripe q + 1 (the row below), so the backward pass reads all successors from one stripe."""
    inf = cost.dtype.type(np.inf)
    zero = cost.dtype.type(0.0)
    for b in numba.prange(cost.shape[0]):
        n, m = lengths_x[b], lengths_y[b]
        if n == 0 or m == 0:
            values[b] = 0.0
            continue
        times = _time_count(m)
        R = np.full((times, LANES + 1), inf, dtype=cost.dtype)  # skewed R of the current stripe
        R[0, 0] = 0.0  # above the first stripe is the boundary row: R(0, 0) = 0, R(0, c > 0) = +inf
        skewed_cost = np.zeros((times, LANES + 1), dtype=cost.dtype)
        for q in range(_stripe_count(n)):
            first_row = q * LANES
            rows = min(LANES, n - first_row)
            for lane in range(1, rows + 1):
                for c in range(1, m + 1):
                    skewed_cost[c + lane, lane] = cost[b, first_row + lane - 1, c - 1]
            W = weights[b, q]
            for t in range(2, m + LANES + 1):
                for lane in range(1, LANES + 1):
                    up, left, diag = R[t - 1, lane - 1], R[t - 1, lane], R[t - 2, lane - 1]
                    smallest = min(up, min(left, diag))
                    w_up = exp_nonpositive((smallest - up) * inv_gamma)
                    w_left = exp_nonpositive((smallest - left) * inv_gamma)
                    w_diag = exp_nonpositive((smallest - diag) * inv_gamma)
                    norm = w_up + w_left + w_diag
                    value = skewed_cost[t, lane] + smallest - gamma * log_one_to_three(norm)
                    c = t - lane
                    R[t, lane] = value if c >= 1 else inf  # c == 0 is the boundary column R(i, 0) = +inf
                    valid = (c >= 1) & (c <= m) & (lane <= rows)
                    scale = 1.0 / norm if valid else zero
                    W[UP, t, lane] = w_up * scale
                    W[LEFT, t, lane] = w_left * scale
                    W[DIAG, t, lane] = w_diag * scale
            for t in (0, 1, m + LANES + 1, m + LANES + 2):
                W[:, t, 1 : LANES + 1] = zero
            W[:, :, LANES + 1] = zero  # no row below yet; filled by the next stripe
            if q > 0:
                weights[b, q - 1, :, LANES:times, LANES + 1] = W[:, : times - LANES, 1]
            for c in range(times - LANES):  # the last row of this stripe is the row above the next one
                R[c, 0] = R[c + LANES, LANES]
        last_lane = n - (_stripe_count(n) - 1) * LANES
        values[b] = R[m + last_lane, last_lane]


@numba.njit(**_KERNEL_OPTIONS)
def _backward_kernel(weights, lengths_x, lengths_y, grad_values, grad_cost):
    """Writes grad_values[b] * E into grad_cost (left zero beyond the lengths): the recursion is linear in its seed."""
    for b in numba.prange(weights.shape[0]):
        n, m = lengths_x[b], lengths_y[b]
        if n == 0 or m == 0:
            continue
        times = _time_count(m)
        E = np.zeros((times, LANES + 2), dtype=weights.dtype)  # skewed E; lane LANES + 1 is the row below
        below = np.zeros(times, dtype=weights.dtype)  # lane 1 of the stripe below, by its own time
        last_stripe = _stripe_count(n) - 1
        seed_lane = n - last_stripe * LANES
        for q in range(last_stripe, -1, -1):
            W = weights[b, q]
            E[:, :] = 0.0
            E[LANES:times, LANES + 1] = below[: times - LANES]
            for t in range(m + LANES, 1, -1):
                for lane in range(1, LANES + 1):
                    E[t, lane] = (
                        E[t + 1, lane + 1] * W[UP, t + 1, lane + 1]
                        + E[t + 1, lane] * W[LEFT, t + 1, lane]
                        + E[t + 2, lane + 1] * W[DIAG, t + 2, lane + 1]
                    )
                if q == last_stripe and t == m + seed_lane:
                    E[t, seed_lane] = grad_values[b]
            first_row = q * LANES
            for lane in range(1, min(LANES, n - first_row) + 1):
                for c in range(1, m + 1):
                    grad_cost[b, first_row + lane - 1, c - 1] = E[c + lane, lane]
            below[:] = E[:, 1]


def forward(cost, gamma, lengths_x, lengths_y):
    batch, n_rows, n_cols = cost.shape
    values = torch.empty(batch, dtype=cost.dtype)
    weights = torch.empty((batch, _stripe_count(n_rows), 3, _time_count(n_cols), LANES + 2), dtype=cost.dtype)
    lengths_x, lengths_y = lengths_x.numpy(), lengths_y.numpy()
    cost = cost.detach().numpy()
    # gamma in the array's own dtype, so float32 input keeps float32 arithmetic inside the kernel
    gamma, inv_gamma = cost.dtype.type(gamma), cost.dtype.type(1.0 / gamma)
    _forward_kernel(cost, gamma, inv_gamma, lengths_x, lengths_y, values.numpy(), weights.numpy())
    return values, (weights, lengths_x, lengths_y, n_rows, n_cols)


def backward(state, grad_values):
    weights, lengths_x, lengths_y, n_rows, n_cols = state
    grad_cost = torch.zeros((weights.shape[0], n_rows, n_cols), dtype=weights.dtype)
    grad_values = grad_values.to(weights.dtype).detach()
    _backward_kernel(weights.numpy(), lengths_x, lengths_y, grad_values.numpy(), grad_cost.numpy())
    return grad_cost
