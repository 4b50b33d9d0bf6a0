"""Soft-DTW on the CPU: Numba kernels, one example per thread.

Numba earns its place here: the recursion is a strictly sequential scan over each example's cells, which
PyTorch can only run one anti-diagonal (one Python step) at a time, while compiled loops run every example of the
batch in parallel. The forward pass stores the three soft-min weights of every cell, so the backward pass (the
expected alignment of Cuturi & Blondel) is a plain weighted sum with no exp and no log.
"""

import numba
import numpy as np
import torch

UP, LEFT, DIAG = 0, 1, 2


# fastmath is safe: boundary rows and columns are handled explicitly, so no infinity ever enters the arithmetic.
@numba.njit(parallel=True, fastmath=True, cache=True)
def _forward_kernel(cost, gamma, inv_gamma, lengths_x, lengths_y, values, weights):
    for b in numba.prange(cost.shape[0]):
        n, m = lengths_x[b], lengths_y[b]
        if n == 0 or m == 0:
            values[b] = 0.0
            continue
        previous = np.empty_like(cost[b, 0, :m])  # R[i - 1, :] of the current row i
        current = np.empty_like(previous)
        # First row: only the left predecessor exists (the diagonal one for the corner cell).
        total = 0.0
        for j in range(m):
            total += cost[b, 0, j]
            previous[j] = total
            weights[b, 0, j, UP] = 0.0
            weights[b, 0, j, LEFT] = 1.0 if j > 0 else 0.0
            weights[b, 0, j, DIAG] = 0.0 if j > 0 else 1.0
        for i in range(1, n):
            current[0] = cost[b, i, 0] + previous[0]  # first column: only the cell above
            weights[b, i, 0, UP] = 1.0
            weights[b, i, 0, LEFT] = 0.0
            weights[b, i, 0, DIAG] = 0.0
            for j in range(1, m):
                up, left, diag = previous[j], current[j - 1], previous[j - 1]
                smallest = min(up, left, diag)
                w_up = np.exp((smallest - up) * inv_gamma)
                w_left = np.exp((smallest - left) * inv_gamma)
                w_diag = np.exp((smallest - diag) * inv_gamma)
                norm = w_up + w_left + w_diag
                current[j] = cost[b, i, j] + smallest - gamma * np.log(norm)
                inv_norm = 1.0 / norm
                weights[b, i, j, UP] = w_up * inv_norm
                weights[b, i, j, LEFT] = w_left * inv_norm
                weights[b, i, j, DIAG] = w_diag * inv_norm
            previous, current = current, previous
        values[b] = previous[m - 1]


@numba.njit(parallel=True, fastmath=True, cache=True)
def _backward_kernel(weights, lengths_x, lengths_y, grad_values, grad_cost):
    """Writes grad_values[b] * E into grad_cost (zeros beyond the lengths); the recursion is linear in the seed."""
    for b in numba.prange(weights.shape[0]):
        n, m = lengths_x[b], lengths_y[b]
        if n == 0 or m == 0:
            continue
        E = grad_cost[b]
        E[n - 1, m - 1] = grad_values[b]
        for j in range(m - 2, -1, -1):  # last row: only the successor on the right
            E[n - 1, j] = E[n - 1, j + 1] * weights[b, n - 1, j + 1, LEFT]
        for i in range(n - 2, -1, -1):
            E[i, m - 1] = E[i + 1, m - 1] * weights[b, i + 1, m - 1, UP]  # last column: only the one below
            for j in range(m - 2, -1, -1):
                E[i, j] = (
                    E[i + 1, j] * weights[b, i + 1, j, UP]
                    + E[i, j + 1] * weights[b, i, j + 1, LEFT]
                    + E[i + 1, j + 1] * weights[b, i + 1, j + 1, DIAG]
                )


def forward(cost, gamma, lengths_x, lengths_y):
    batch, n_rows, n_cols = cost.shape
    values = torch.empty(batch, dtype=cost.dtype)
    weights = torch.empty((batch, n_rows, n_cols, 3), dtype=cost.dtype)
    lengths_x, lengths_y = lengths_x.numpy(), lengths_y.numpy()
    cost = cost.detach().numpy()
    # gamma in the array's own dtype, so float32 input keeps float32 arithmetic inside the kernel
    gamma, inv_gamma = cost.dtype.type(gamma), cost.dtype.type(1.0 / gamma)
    _forward_kernel(cost, gamma, inv_gamma, lengths_x, lengths_y, values.numpy(), weights.numpy())
    return values, (weights, lengths_x, lengths_y)


def backward(state, grad_values):
    weights, lengths_x, lengths_y = state
    grad_cost = torch.zeros(weights.shape[:3], dtype=weights.dtype)
    grad_values = grad_values.to(weights.dtype)
    _backward_kernel(weights.numpy(), lengths_x, lengths_y, grad_values.detach().numpy(), grad_cost.numpy())
    return grad_cost
