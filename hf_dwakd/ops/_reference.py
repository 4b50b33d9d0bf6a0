"""Readable PyTorch Soft-DTW: the yardstick the fast kernels are tested against.

The recursion walks the anti-diagonals i + j = d of the (N, M) grid, every cell of a diagonal and every example of
the batch at once. Cells past an example's lengths are computed too but never read: a cell only depends on cells
with smaller i and j, and its backward weight on padding is multiplied by an adjoint that stays exactly zero.
Runs on any device, in the dtype it is given.
"""

import torch

UP, LEFT, DIAG = 0, 1, 2


def _diagonal(d, n_rows, n_cols, device):
    """1-based (i, j) of the cells with i + j = d inside an n_rows x n_cols grid."""
    rows = torch.arange(max(1, d - n_cols), min(n_rows, d - 1) + 1, device=device)
    return rows, d - rows


def forward(cost, gamma, lengths_x, lengths_y):
    batch, n_rows, n_cols = cost.shape
    row_ok = torch.arange(n_rows, device=cost.device) < lengths_x[:, None]
    col_ok = torch.arange(n_cols, device=cost.device) < lengths_y[:, None]
    cost = cost.masked_fill(~(row_ok[:, :, None] & col_ok[:, None, :]), 0.0)

    # R is 1-based with the boundary R[0, 0] = 0, R[i, 0] = R[0, j] = +inf.
    R = cost.new_full((batch, n_rows + 1, n_cols + 1), float("inf"))
    R[:, 0, 0] = 0.0
    # weights[:, k, i, j]: share of predecessor k (up, left, diag) in the soft-min of cell (i, j). The extra row
    # and column stay zero so the backward can read the successors of the last row/column without a branch.
    weights = cost.new_zeros((batch, 3, n_rows + 2, n_cols + 2))
    for d in range(2, n_rows + n_cols + 1):
        i, j = _diagonal(d, n_rows, n_cols, cost.device)
        predecessors = torch.stack((R[:, i - 1, j], R[:, i, j - 1], R[:, i - 1, j - 1]), dim=1)
        scaled = -predecessors / gamma
        R[:, i, j] = cost[:, i - 1, j - 1] - gamma * torch.logsumexp(scaled, dim=1)
        weights[:, :, i, j] = torch.softmax(scaled, dim=1)

    nonempty = (lengths_x > 0) & (lengths_y > 0)
    values = R[torch.arange(batch, device=cost.device), lengths_x, lengths_y]
    values = torch.where(nonempty, values, torch.zeros_like(values))
    return values, (weights, lengths_x, lengths_y, nonempty)


def backward(state, grad_values):
    """Expected alignment E (Cuturi & Blondel): E[i, j] = sum over successors s of E[s] * weight of (i, j) in s."""
    weights, lengths_x, lengths_y, nonempty = state
    batch, _, n_rows, n_cols = weights.shape
    n_rows, n_cols = n_rows - 2, n_cols - 2
    E = weights.new_zeros((batch, n_rows + 2, n_cols + 2))
    seed = torch.where(nonempty, grad_values, torch.zeros_like(grad_values))
    E[torch.arange(batch, device=E.device), lengths_x, lengths_y] = seed
    for d in range(n_rows + n_cols, 1, -1):
        i, j = _diagonal(d, n_rows, n_cols, E.device)
        E[:, i, j] += (
            E[:, i + 1, j] * weights[:, UP, i + 1, j]
            + E[:, i, j + 1] * weights[:, LEFT, i, j + 1]
            + E[:, i + 1, j + 1] * weights[:, DIAG, i + 1, j + 1]
        )
    return E[:, 1 : n_rows + 1, 1 : n_cols + 1].contiguous()
