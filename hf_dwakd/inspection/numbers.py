"""The numbers behind the alignment picture of one example, from the objective's own functions.

Rows are the student's response tokens, columns the teacher's; columns are numbered from 1 in the band, as in
`objective/alignment.py`. The expected alignment is the gradient of the hidden pair's Soft-DTW value with respect
to its cost matrix (the band included when the objective uses it): entry (i, j) is the probability that the soft
alignment path goes through cell (i, j).
"""

from dataclasses import asdict, dataclass

import torch

from ..objective import DWAKDLossOptions, SideOutputs, cross_model_attention, dwakd_loss, gather_responses
from ..objective.alignment import hidden_pair
from ..objective.dwakd import options_band
from ..ops.divergence import divergence_costs, outside_band
from ..ops.soft_dtw import soft_dtw
from ..projectors import DWAKDProjectors


@dataclass
class AlignmentNumbers:
    student_tokens: list[str]  # n response tokens of the student (rows)
    teacher_tokens: list[str]  # m response tokens of the teacher (columns)
    attention: list[list[float]]  # (n, m) a_t2s, rows sum to 1
    band_center: list[float]  # (n,) c_i, in columns numbered from 1
    band_width: list[float]  # (n,) w_i; column j is inside row i's band when |j - c_i| <= w_i
    expected_alignment: list[list[float]]  # (n, m) d sdtw / d cost of the hidden pair
    mean_row_entropy: float  # mean over rows of the entropy of a_t2s (nats)
    band_mass: float  # share of the attention mass inside the band
    losses: dict[str, float]  # each component of `dwakd_loss` on this example alone, and `loss`
    gamma: float
    band_in_cost: bool  # whether the objective adds the band penalty to the cost (`dtw_band`)
    step: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def alignment_numbers(
    student: SideOutputs,
    teacher: SideOutputs,
    projectors: DWAKDProjectors,
    options: DWAKDLossOptions,
    student_tokens: list[str],
    teacher_tokens: list[str],
    step: int | None = None,
) -> AlignmentNumbers:
    """The picture's numbers for the first example of a batch of one, as `dwakd_loss` computes them."""
    with torch.no_grad():
        loss, components = dwakd_loss(student, teacher, projectors, options)
        student_responses, teacher_responses = gather_responses(student), gather_responses(teacher)
        n, m = int(student_responses.lengths[0]), int(teacher_responses.lengths[0])
        attention = cross_model_attention(student_responses, teacher_responses, projectors).t2s_attention
        band = options_band(attention, student_responses, teacher_responses, options)
        x, y = hidden_pair(student_responses, teacher_responses, projectors)
        inside = ~outside_band(band, attention.shape[2], attention.dtype, attention.device)
        rows = attention[0, :n, :m]
        band_mass = float((rows * inside[0, :n, :m]).sum() / max(n, 1))
        mean_row_entropy = float(torch.special.entr(rows).sum(dim=-1).mean())
    expected = expected_alignment(
        x, y, student_responses.lengths, teacher_responses.lengths, band if options.use_dtw_band else None, options
    )
    return AlignmentNumbers(
        student_tokens=list(student_tokens),
        teacher_tokens=list(teacher_tokens),
        attention=rows.tolist(),
        band_center=band.center[0, :n].tolist(),
        band_width=band.width[0, :n].tolist(),
        expected_alignment=expected[0, :n, :m].tolist(),
        mean_row_entropy=mean_row_entropy,
        band_mass=band_mass,
        losses={**{name: float(value) for name, value in components.items()}, "loss": float(loss)},
        gamma=float(options.dtw_gamma),
        band_in_cost=options.use_dtw_band,
        step=step,
    )


def expected_alignment(x, y, lengths_x, lengths_y, band, options: DWAKDLossOptions) -> torch.Tensor:
    """(B, N, M) gradient of sdtw(C~(x, y)) with respect to the cross cost C~ the divergence builds."""
    n_rows, n_cols = x.shape[1], y.shape[1]
    cost, _, _ = divergence_costs(x.detach(), y.detach(), lengths_x, lengths_y, band)
    cross = cost[: x.shape[0], :n_rows, :n_cols].detach().requires_grad_(True)
    with torch.enable_grad():
        values = soft_dtw(cross, options.dtw_gamma, lengths_x, lengths_y, backend=options.dtw_backend)
        (gradient,) = torch.autograd.grad(values.sum(), cross)
    return gradient
