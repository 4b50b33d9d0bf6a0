"""Batched, variable-length Soft-DTW (Cuturi & Blondel, 2017) with an analytic backward pass.

`soft_dtw` checks its inputs, runs the recursion in float32 (float64 stays float64) whatever the autocast state,
and returns the gradient with respect to the cost in the cost's own dtype. The recursion itself lives in a
backend module with two functions: `forward(cost, gamma, lengths_x, lengths_y) -> (values, state)` and
`backward(state, grad_values) -> grad_cost`.
"""

import math
from numbers import Real

import torch

from hf_dwakd.ops import _reference

BACKENDS = ("auto", "cpu", "triton", "reference")


def _triton_backend():
    try:
        from hf_dwakd.ops import _triton
    except ImportError:
        return None
    return _triton


def _cpu_backend():
    from hf_dwakd.ops import _cpu  # compiles with Numba: loaded when a CPU Soft-DTW first runs

    return _cpu


def _resolve_backend(name, cost):
    if name not in BACKENDS:
        raise ValueError(f"backend={name!r} is unknown; use one of {BACKENDS}.")
    is_cuda = cost.device.type == "cuda"
    if name == "auto":
        if is_cuda:
            triton = _triton_backend()
            # The Triton kernel computes in float32 only; float64 (gradcheck) goes to the reference.
            return triton if triton is not None and cost.dtype != torch.float64 else _reference
        return _cpu_backend() if cost.device.type == "cpu" else _reference
    if name == "reference":
        return _reference
    if name == "cpu":
        if cost.device.type != "cpu":
            raise ValueError(f"backend='cpu' needs CPU tensors, got {cost.device}; use backend='auto'.")
        return _cpu_backend()
    if not is_cuda:
        raise ValueError(f"backend='triton' needs CUDA tensors, got {cost.device}; use backend='auto'.")
    triton = _triton_backend()
    if triton is None:
        raise ValueError("backend='triton' needs the `triton` package (shipped with CUDA builds of torch).")
    return triton


def check_lengths(
    lengths: torch.Tensor | None, name: str, batch: int, size: int, device: torch.device
) -> torch.Tensor:
    if lengths is None:
        return torch.full((batch,), size, dtype=torch.long, device=device)
    if not isinstance(lengths, torch.Tensor) or lengths.dtype.is_floating_point or lengths.dtype.is_complex:
        raise TypeError(f"{name} must be an integer tensor of shape ({batch},), got {type(lengths).__name__}.")
    if lengths.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},) (one length per example), got {tuple(lengths.shape)}.")
    lengths = lengths.to(device=device, dtype=torch.long)
    if batch and (int(lengths.min()) < 0 or int(lengths.max()) > size):
        raise ValueError(f"{name} must lie in [0, {size}] (the padded size), got {lengths.tolist()}.")
    return lengths


def check_gamma(gamma: float) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, Real) or not math.isfinite(gamma) or gamma <= 0:
        raise ValueError(f"gamma must be a finite number > 0, got {gamma!r}.")
    return float(gamma)


class _SoftDTW(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cost, gamma, lengths_x, lengths_y, backend):
        compute_dtype = torch.float64 if cost.dtype == torch.float64 else torch.float32
        with torch.autocast(cost.device.type, enabled=False):
            values, state = backend.forward(cost.to(compute_dtype).contiguous(), gamma, lengths_x, lengths_y)
        ctx.state, ctx.backend, ctx.cost_dtype = state, backend, cost.dtype
        return values

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_values):
        with torch.autocast(grad_values.device.type, enabled=False):
            grad_cost = ctx.backend.backward(ctx.state, grad_values.contiguous())
        return grad_cost.to(ctx.cost_dtype), None, None, None, None


def soft_dtw(
    cost: torch.Tensor,
    gamma: float,
    lengths_x: torch.Tensor | None = None,
    lengths_y: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Soft-DTW value of each cost matrix of a padded batch.

    cost: (B, N, M) float tensor; example b uses cost[b, :lengths_x[b], :lengths_y[b]].
    gamma: smoothing > 0. lengths_x, lengths_y: (B,) integer tensors, None meaning N (resp. M) for every example;
    an example with a zero length has value 0 and zero gradient.
    backend: "auto" (Triton for CUDA tensors when triton imports, else the Numba CPU kernel), "cpu", "triton" or
    "reference" (readable PyTorch, any device).
    Returns (B,) values in float32 (float64 for float64 input, except on "triton", which computes in float32).
    The gradient with respect to `cost` is the expected alignment matrix, exactly zero on padding.
    """
    if not isinstance(cost, torch.Tensor) or cost.dim() != 3 or not cost.dtype.is_floating_point:
        shape = tuple(cost.shape) if isinstance(cost, torch.Tensor) else type(cost).__name__
        raise ValueError(f"cost must be a floating-point tensor of shape (B, N, M), got {shape}.")
    gamma = check_gamma(gamma)
    batch, n_rows, n_cols = cost.shape
    lengths_x = check_lengths(lengths_x, "lengths_x", batch, n_rows, cost.device)
    lengths_y = check_lengths(lengths_y, "lengths_y", batch, n_cols, cost.device)
    return _SoftDTW.apply(cost, gamma, lengths_x, lengths_y, _resolve_backend(backend, cost))
