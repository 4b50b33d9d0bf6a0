"""Starts of the projectors other than random, applied once before the first training step
(`DWAKDConfig.projector_init`; docs/method.md, Projector start)."""

from .aligned import AlignedFit, calibration_share, fit_aligned_projectors, position_overlaps, regression_rows
from .overlap import TokenBytes, target_overlap
from .pseudo_inverse import pseudo_inverse_s2t, shared_vocabulary
from .ridge import RidgeNormalEquations

PROJECTOR_INITS = ("random", "pseudo_inverse", "aligned")

__all__ = [
    "PROJECTOR_INITS",
    "AlignedFit",
    "RidgeNormalEquations",
    "TokenBytes",
    "calibration_share",
    "fit_aligned_projectors",
    "position_overlaps",
    "pseudo_inverse_s2t",
    "regression_rows",
    "shared_vocabulary",
    "target_overlap",
]
