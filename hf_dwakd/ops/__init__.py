"""Stand-alone operators: batched Soft-DTW and the Soft-DTW divergence."""

from hf_dwakd.ops.divergence import SoftDTWBand, soft_dtw_divergence
from hf_dwakd.ops.soft_dtw import soft_dtw

__all__ = ["SoftDTWBand", "soft_dtw", "soft_dtw_divergence"]
