"""Soft-DTW divergence with cosine cost and the optional soft band on the cross cost (docs/method.md, Soft-DTW
alignment)."""

import math
from numbers import Real
from typing import NamedTuple

import torch
import torch.nn.functional as F

from hf_dwakd.ops.soft_dtw import check_gamma, check_lengths, soft_dtw


class SoftDTWBand(NamedTuple):
    """Additive band on the cross cost: C~[i, j] = C[i, j] + penalty * 1{|j - center[b, i]| > width[b, i]}.

    center, width: (B, N) float tensors, one value per row of x; columns j are 1-based (j = 1..M). They are
    constants: no gradient flows through them. penalty: finite float >= 0.
    """

    center: torch.Tensor
    width: torch.Tensor
    penalty: float


def _check_band(band, batch, n_rows):
    if not isinstance(band, SoftDTWBand):
        raise TypeError(f"band must be a SoftDTWBand(center, width, penalty) or None, got {type(band).__name__}.")
    for name in ("center", "width"):
        value = getattr(band, name)
        if not isinstance(value, torch.Tensor) or value.shape != (batch, n_rows):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"band.{name} must be a tensor of shape (B, N) = ({batch}, {n_rows}), got {shape}.")
    if not isinstance(band.penalty, Real) or not math.isfinite(band.penalty) or band.penalty < 0:
        raise ValueError(f"band.penalty must be a finite number >= 0, got {band.penalty!r}.")


def outside_band(band, n_cols, dtype, device):
    """(B, N, M) bool: whether column j (numbered from 1) lies outside row i's band, where the penalty applies."""
    columns = torch.arange(1, n_cols + 1, device=device, dtype=dtype)
    center = band.center.detach().to(device=device, dtype=dtype)
    width = band.width.detach().to(device=device, dtype=dtype)
    return (columns - center[:, :, None]).abs() > width[:, :, None]


def _zero_padding(sequences, lengths):
    beyond = torch.arange(sequences.shape[1], device=sequences.device) >= lengths[:, None]
    return sequences.masked_fill(beyond[:, :, None], 0.0)


def soft_dtw_divergence(
    x: torch.Tensor,
    y: torch.Tensor,
    gamma: float,
    lengths_x: torch.Tensor | None = None,
    lengths_y: torch.Tensor | None = None,
    band: SoftDTWBand | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """D(x, y) = sdtw(C~(x, y)) - [sdtw(C(x, x)) + sdtw(C(y, y))] / 2 per example, with C = 1 - cos.

    x: (B, N, d), y: (B, M, d) padded batches; lengths_x, lengths_y: (B,) integer tensors (None = full).
    band: optional SoftDTWBand applied to the cross cost only. The three terms of every example run in one
    batched Soft-DTW call, in float32 (float64 stays float64) whatever the autocast state.
    Returns (B,) values; gradients flow to x and y.
    """
    for name, value in (("x", x), ("y", y)):
        if not isinstance(value, torch.Tensor) or value.dim() != 3 or not value.dtype.is_floating_point:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{name} must be a floating-point tensor of shape (B, length, d), got {shape}.")
    if x.shape[0] != y.shape[0] or x.shape[2] != y.shape[2]:
        raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)} must share batch size and feature size d.")
    check_gamma(gamma)
    batch, n_rows, n_cols = x.shape[0], x.shape[1], y.shape[1]
    if band is not None:
        _check_band(band, batch, n_rows)
    lengths_x = check_lengths(lengths_x, "lengths_x", batch, n_rows, x.device)
    lengths_y = check_lengths(lengths_y, "lengths_y", batch, n_cols, x.device)

    cost, lengths_left, lengths_right = divergence_costs(x, y, lengths_x, lengths_y, band)
    values = soft_dtw(cost, gamma, lengths_left, lengths_right, backend=backend)
    cross, self_x, self_y = values.split(batch)
    return cross - 0.5 * (self_x + self_y)


def divergence_costs(x, y, lengths_x, lengths_y, band=None):
    """The divergence's three cost batches stacked, `(cost, lengths_left, lengths_right)`: cost (3B, S, S) holds
    C~(x, y) (the band on it), then C(x, x), then C(y, y), S = max(N, M); lengths (3B,) checked already."""
    batch, n_rows, n_cols = x.shape[0], x.shape[1], y.shape[1]
    dtype = torch.float64 if torch.float64 in (x.dtype, y.dtype) else torch.float32
    size = max(n_rows, n_cols)
    with torch.autocast(x.device.type, enabled=False):
        # Unit rows padded to a common length: one bmm gives the XY, XX and YY costs of every example. Rows past
        # the lengths are zeroed so that whatever padding holds (even nan) cannot reach the gradient.
        x_unit = F.pad(F.normalize(_zero_padding(x.to(dtype), lengths_x), dim=-1), (0, 0, 0, size - n_rows))
        y_unit = F.pad(F.normalize(_zero_padding(y.to(dtype), lengths_y), dim=-1), (0, 0, 0, size - n_cols))
        left = torch.cat((x_unit, x_unit, y_unit))
        right = torch.cat((y_unit, x_unit, y_unit))
        ones = x_unit.new_ones(()).expand(3 * batch, size, size)
        cost = torch.baddbmm(ones, left, right.transpose(1, 2), alpha=-1.0)  # 1 - cos in one pass
        if band is not None:
            cost[:batch, :n_rows, :n_cols] += outside_band(band, n_cols, dtype, x.device).to(dtype) * band.penalty
    return cost, torch.cat((lengths_x, lengths_x, lengths_y)), torch.cat((lengths_y, lengths_x, lengths_y))
