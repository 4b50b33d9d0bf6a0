"""Soft-DTW on CUDA: one Triton program per example, the anti-diagonal wavefront inside the kernel.

R (and, backward, E) live in diagonal-major buffers: cell (i, j) is stored at [i + j, i], so the cells of one
anti-diagonal are contiguous and their neighbours are shifted reads of the two previous diagonals. A program
walks the diagonals in order, all rows of a diagonal at once (in blocks of BLOCK rows for long sequences), with a
CTA barrier between diagonals. One launch per direction, any lengths, float32 arithmetic.

The backward pass recomputes, from R, the soft-min share of cell p in each of its three successors,
share = exp(-R(p)/gamma) / sum over the successor's predecessors of exp(-R/gamma), instead of the usual
exp((R(s) - C(s) - R(p)) / gamma), which loses the small weights to cancellation when R is large.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _share(own, other_a, other_b, inv_gamma):
    """Soft-min weight of `own` among three values (0 where `own` is +inf)."""
    smallest = tl.minimum(own, tl.minimum(other_a, other_b))
    w_own = tl.exp((smallest - own) * inv_gamma)
    total = w_own + tl.exp((smallest - other_a) * inv_gamma) + tl.exp((smallest - other_b) * inv_gamma)
    return w_own / total


@triton.jit
def _forward_kernel(cost_ptr, R_ptr, values_ptr, lengths_x_ptr, lengths_y_ptr, gamma, inv_gamma,
                    n_rows, n_cols, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    n = tl.load(lengths_x_ptr + b).to(tl.int32)
    m = tl.load(lengths_y_ptr + b).to(tl.int32)
    row_stride = n_rows + 2
    cost = cost_ptr + b * n_rows * n_cols
    R = R_ptr + b * (n_rows + n_cols + 3) * row_stride  # R[d, i] at R + d * row_stride + i, +inf off the grid
    for d in range(2, n + m + 1):
        for start in range(1, n + 1, BLOCK):
            i = start + tl.arange(0, BLOCK)
            j = d - i
            valid = (i <= n) & (j >= 1) & (j <= m)
            up = tl.load(R + (d - 1) * row_stride + i - 1, mask=valid, other=float("inf"))
            left = tl.load(R + (d - 1) * row_stride + i, mask=valid, other=float("inf"))
            diag = tl.load(R + (d - 2) * row_stride + i - 1, mask=valid, other=float("inf"))
            c = tl.load(cost + (i - 1).to(tl.int64) * n_cols + (j - 1), mask=valid, other=0.0)
            smallest = tl.minimum(up, tl.minimum(left, diag))
            total = tl.exp((smallest - up) * inv_gamma) + tl.exp((smallest - left) * inv_gamma) \
                + tl.exp((smallest - diag) * inv_gamma)
            tl.store(R + d * row_stride + i, c + smallest - gamma * tl.log(total), mask=valid)
        tl.debug_barrier()  # the next diagonal reads what other threads of this program just wrote
    tl.store(values_ptr + b, tl.load(R + (n + m) * row_stride + n))


@triton.jit
def _backward_kernel(R_ptr, E_ptr, grad_ptr, lengths_x_ptr, lengths_y_ptr, inv_gamma,
                     n_rows, n_cols, BLOCK: tl.constexpr):
    """E[d, i] holds the seed E(n, m) = grad value on entry; every other cell starts at 0."""
    b = tl.program_id(0).to(tl.int64)
    n = tl.load(lengths_x_ptr + b).to(tl.int32)
    m = tl.load(lengths_y_ptr + b).to(tl.int32)
    row_stride = n_rows + 2
    R = R_ptr + b * (n_rows + n_cols + 3) * row_stride
    E = E_ptr + b * (n_rows + n_cols + 3) * row_stride
    grad = grad_ptr + b * n_rows * n_cols
    for step in range(0, n + m - 1):
        d = n + m - step  # from the last cell's diagonal down to 2
        for start in range(1, n + 1, BLOCK):
            i = start + tl.arange(0, BLOCK)
            j = d - i
            valid = (i <= n) & (j >= 1) & (j <= m)
            own = tl.load(R + d * row_stride + i, mask=valid, other=float("inf"))
            # successors (i+1, j), (i, j+1), (i+1, j+1), each with its two other predecessors
            below_ok = valid & (i < n)
            right_ok = valid & (j < m)
            w_down = _share(own, tl.load(R + d * row_stride + i + 1, mask=below_ok, other=float("inf")),
                            tl.load(R + (d - 1) * row_stride + i, mask=below_ok, other=float("inf")), inv_gamma)
            w_right = _share(own, tl.load(R + d * row_stride + i - 1, mask=right_ok, other=float("inf")),
                             tl.load(R + (d - 1) * row_stride + i - 1, mask=right_ok, other=float("inf")),
                             inv_gamma)
            diagonal_ok = below_ok & (j < m)
            w_diagonal = _share(own, tl.load(R + (d + 1) * row_stride + i, mask=diagonal_ok, other=float("inf")),
                                tl.load(R + (d + 1) * row_stride + i + 1, mask=diagonal_ok, other=float("inf")),
                                inv_gamma)
            e = tl.load(E + d * row_stride + i, mask=valid, other=0.0)  # the seed, or 0
            e += tl.where(below_ok, tl.load(E + (d + 1) * row_stride + i + 1, mask=below_ok, other=0.0) * w_down,
                          0.0)
            e += tl.where(right_ok, tl.load(E + (d + 1) * row_stride + i, mask=right_ok, other=0.0) * w_right, 0.0)
            e += tl.where(diagonal_ok,
                          tl.load(E + (d + 2) * row_stride + i + 1, mask=diagonal_ok, other=0.0) * w_diagonal, 0.0)
            tl.store(E + d * row_stride + i, e, mask=valid)
            tl.store(grad + (i - 1).to(tl.int64) * n_cols + (j - 1), e, mask=valid)
        tl.debug_barrier()


def _launch_options(n_rows):
    block = min(max(triton.next_power_of_2(n_rows), 32), 1024)
    return block, max(1, min(block // 64, 16))  # BLOCK, num_warps (2 rows a thread)


def forward(cost, gamma, lengths_x, lengths_y):
    batch, n_rows, n_cols = cost.shape
    cost = cost.to(torch.float32).contiguous()
    R = torch.full((batch, n_rows + n_cols + 3, n_rows + 2), float("inf"), dtype=torch.float32, device=cost.device)
    R[:, 0, 0] = 0.0
    values = torch.empty(batch, dtype=torch.float32, device=cost.device)
    block, num_warps = _launch_options(n_rows)
    _forward_kernel[(batch,)](cost, R, values, lengths_x, lengths_y, float(gamma), 1.0 / gamma,
                              n_rows, n_cols, BLOCK=block, num_warps=num_warps)
    nonempty = (lengths_x > 0) & (lengths_y > 0)
    values = torch.where(nonempty, values, torch.zeros_like(values))
    return values, (R, 1.0 / gamma, lengths_x, lengths_y, nonempty, n_rows, n_cols)


def backward(state, grad_values):
    R, inv_gamma, lengths_x, lengths_y, nonempty, n_rows, n_cols = state
    batch = R.shape[0]
    E = torch.zeros_like(R)
    seed = torch.where(nonempty, grad_values.to(torch.float32), torch.zeros_like(grad_values, dtype=torch.float32))
    E[torch.arange(batch, device=R.device), lengths_x + lengths_y, lengths_x] = seed
    grad = torch.zeros((batch, n_rows, n_cols), dtype=torch.float32, device=R.device)
    block, num_warps = _launch_options(n_rows)
    _backward_kernel[(batch,)](R, E, grad, lengths_x, lengths_y, inv_gamma, n_rows, n_cols,
                               BLOCK=block, num_warps=num_warps)
    return grad
