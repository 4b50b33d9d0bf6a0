"""Sequence-level alignment (docs/method.md, Soft-DTW alignment): the attention-entropy band and the two Soft-DTW
divergence terms."""

import torch
from torch import nn

from hf_dwakd.objective.attention import normalise_per_example, project
from hf_dwakd.objective.responses import Responses
from hf_dwakd.ops import SoftDTWBand, soft_dtw_divergence


@torch.no_grad()
def attention_band(
    t2s_attention: torch.Tensor,
    student_lengths: torch.Tensor,
    teacher_lengths: torch.Tensor,
    base: float,
    beta: float,
    alpha: float,
    penalty: float,
) -> SoftDTWBand:
    """Per student row i = 1..n: centre alpha * sum_j j a[i, j] + (1 - alpha) * i m / n, width base + beta * h_i.

    `t2s_attention` (B, n, m) holds a_t2s on the response positions, each valid row summing to 1; h_i is the
    entropy of row i. Indices start at 1 (docs/method.md, Decisions and differences from the released code).
    """
    attention = t2s_attention.float()
    n_max, m_max = attention.shape[1:]
    columns = torch.arange(1, m_max + 1, device=attention.device, dtype=attention.dtype)
    rows = torch.arange(1, n_max + 1, device=attention.device, dtype=attention.dtype)
    diagonal = rows * (teacher_lengths.float() / student_lengths.float().clamp(min=1))[:, None]
    center = alpha * (attention * columns).sum(dim=-1) + (1 - alpha) * diagonal
    row_entropy = -torch.special.xlogy(attention, attention).sum(dim=-1)
    return SoftDTWBand(center=center, width=base + beta * row_entropy, penalty=float(penalty))


def hidden_alignment(
    student: Responses, teacher: Responses, projectors: nn.Module, gamma: float, band, backend: str
) -> torch.Tensor:
    """(B,) D(student last hidden states, t2s(N(H_t)), teacher detached), the band on the cross cost."""
    return soft_dtw_divergence(
        *hidden_pair(student, teacher, projectors), gamma, student.lengths, teacher.lengths, band=band, backend=backend
    )


def hidden_pair(student: Responses, teacher: Responses, projectors: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The two sequences the hidden term aligns: the student's last hidden states and t2s(N(H_t)), teacher
    detached."""
    return student.hidden, project(projectors.t2s, normalise_per_example(teacher.hidden.detach(), teacher.valid))


def embedding_alignment(
    student: Responses, teacher: Responses, projectors: nn.Module, gamma: float, band, backend: str
) -> torch.Tensor:
    """(B,) D(student target embeddings, embed_t2s(teacher target embeddings, detached)), the band on the cross
    cost."""
    projected = project(projectors.embed_t2s, teacher.target_embeds.detach())
    return soft_dtw_divergence(
        student.target_embeds, projected, gamma, student.lengths, teacher.lengths, band=band, backend=backend
    )
