"""The DWA-KD objective (docs/method.md) as tensor code: `dwakd_loss` on two models' `SideOutputs`."""

from hf_dwakd.objective.attention import CrossModelAttention, cross_model_attention
from hf_dwakd.objective.divergences import DIVERGENCES, divergence
from hf_dwakd.objective.dwakd import dwakd_loss
from hf_dwakd.objective.options import DWAKDLossOptions
from hf_dwakd.objective.outputs import IGNORE_INDEX, SideOutputs, shift_for_next_token
from hf_dwakd.objective.responses import Responses, gather_responses

__all__ = [
    "DIVERGENCES",
    "IGNORE_INDEX",
    "CrossModelAttention",
    "DWAKDLossOptions",
    "Responses",
    "SideOutputs",
    "cross_model_attention",
    "divergence",
    "dwakd_loss",
    "gather_responses",
    "shift_for_next_token",
]
