"""Cross-model attention between student and teacher response positions (docs/method.md, Cross-model attention).

`cross_model_attention` returns the small (tokens x hidden) results; the vocabulary-wide logits are produced
per chunk of tokens by `t2s_logits` and `s2t_logits`.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hf_dwakd.objective.responses import Responses


@dataclass
class CrossModelAttention:
    t2s_hidden: torch.Tensor  # (B, n, d_s) h_t2s at the student response positions
    s2t_hidden: torch.Tensor  # (B, m, d_t) h_s2t at the teacher response positions
    t2s_attention: torch.Tensor  # (B, n, m) a_t2s, rows sum to 1, zero outside response positions (float32)


def normalise_per_example(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """N(z) = z / std(z), the std (unbiased, as torch's default) over one example's response positions and all
    features (docs/method.md, Decisions and differences from the released code). Returns float32."""
    values = values.float()
    mask = valid[:, :, None].float()
    count = (valid.sum(dim=1).float() * values.shape[-1])[:, None, None]
    mean = (values * mask).sum(dim=(1, 2), keepdim=True) / count.clamp(min=1)
    variance = (((values - mean) * mask) ** 2).sum(dim=(1, 2), keepdim=True) / (count - 1).clamp(min=1)
    return values / variance.sqrt().clamp(min=1e-6)


def project(linear: nn.Linear, values: torch.Tensor) -> torch.Tensor:
    """Apply a projector in its own dtype (the inputs may be bf16 while the projectors are float32)."""
    return linear(values.to(linear.weight.dtype))


def cross_model_attention(student: Responses, teacher: Responses, projectors: nn.Module) -> CrossModelAttention:
    """Query from the detached student embeddings, key and value from the (detached) teacher; `projectors` needs
    `query`, `t2s` and `s2t`. Non-response positions of either side get no attention."""
    student_index = torch.cat([student.input_embeds, student.target_embeds], dim=-1).detach()
    query = project(projectors.query, student_index)
    teacher_index = torch.cat([teacher.input_embeds, teacher.target_embeds], dim=-1).detach()
    key = normalise_per_example(teacher_index, teacher.valid)
    value_t2s = project(
        projectors.t2s,
        normalise_per_example(teacher.hidden.detach(), teacher.valid)
        + normalise_per_example(teacher.target_embeds.detach(), teacher.valid),
    )
    value_s2t = project(projectors.s2t, student.hidden)

    with torch.autocast(query.device.type, enabled=False):  # small (n x m) scores: keep them in float32
        scores = query.float() @ key.transpose(1, 2) / math.sqrt(key.shape[-1])
    lowest = torch.finfo(scores.dtype).min
    t2s_attention = scores.masked_fill(~teacher.valid[:, None, :], lowest).softmax(dim=-1)
    s2t_attention = scores.transpose(1, 2).masked_fill(~student.valid[:, None, :], lowest).softmax(dim=-1)
    # Rows of padding slots (and of examples with no response) are zeroed so nothing flows from them.
    t2s_attention = t2s_attention * student.valid[:, :, None]
    s2t_attention = s2t_attention * teacher.valid[:, :, None]
    return CrossModelAttention(
        t2s_hidden=t2s_attention.to(value_t2s.dtype) @ value_t2s,
        s2t_hidden=s2t_attention.to(value_s2t.dtype) @ value_s2t,
        t2s_attention=t2s_attention,
    )


def t2s_logits(t2s_hidden: torch.Tensor, student_lm_head_weight: torch.Tensor) -> torch.Tensor:
    """z_t2s over the student vocabulary, through the *detached* student LM head, in the head's dtype."""
    weight = student_lm_head_weight.detach()
    return F.linear(t2s_hidden.to(weight.dtype), weight)


def s2t_logits(s2t_hidden: torch.Tensor, teacher_lm_head_weight: torch.Tensor) -> torch.Tensor:
    """z_s2t over the teacher vocabulary, through the (frozen) teacher LM head, in the head's dtype."""
    weight = teacher_lm_head_weight.detach()
    return F.linear(s2t_hidden.to(weight.dtype), weight)

