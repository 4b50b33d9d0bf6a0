"""The knobs of the DWA-KD objective, with the defaults of docs/method.md, checked when built."""

import math
from dataclasses import dataclass, fields

from hf_dwakd.objective.divergences import check_divergence
from hf_dwakd.objective.weights import STUDENT_WEIGHT_NORMALIZATIONS
from hf_dwakd.ops.soft_dtw import BACKENDS


@dataclass
class DWAKDLossOptions:
    """Weights (Loss), KD (Dual-space KD), Soft-DTW alignment and band, and the Table 3 ablation switches.

    `entropy_weighting=False` sets every KD weight to 1 (the gate then plays no part); `teacher_gate=False` uses
    the student entropy alone; `student_weight_normalization` says what is normalised per sequence (see
    `weights.student_weights`); `kd_student_scale` multiplies the student-space term alone (the KD warm-up
    ramps it from 0 to 1). `dtw` turns the whole alignment off, `dtw_hidden`/`dtw_embed` one pair each,
    `dtw_band` the attention-entropy band. `chunk_size` (tokens) bounds the vocabulary-wide memory; `None`
    computes all tokens at once.
    """

    ce_weight: float = 0.5
    kd_weight: float = 0.5
    dtw_weight: float = 0.2
    temperature: float = 2.0
    divergence: str = "forward_kl"
    skew: float = 0.1
    entropy_weighting: bool = True
    teacher_gate: bool = True
    student_weight_normalization: str = "product"
    kd_student_scale: float = 1.0
    dtw: bool = True
    dtw_band: bool = True
    dtw_hidden: bool = True
    dtw_embed: bool = True
    gamma: float = 2.0
    band_base: float = 5.0
    band_beta: float = 2.0
    band_alpha: float = 0.7
    band_penalty: float = 1.0
    chunk_size: int | None = None
    dtw_backend: str = "auto"

    def __post_init__(self):
        for field in fields(self):
            value = getattr(self, field.name)
            if field.type is bool and not isinstance(value, bool):
                raise ValueError(f"{field.name} must be True or False, got {value!r}.")
            if field.type is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{field.name} must be a number, got {value!r}.")
            if field.type is float and not math.isfinite(value):
                raise ValueError(f"{field.name} must be finite, got {value!r}.")
        weights = ("ce_weight", "kd_weight", "dtw_weight", "kd_student_scale")
        for name in (*weights, "band_base", "band_beta", "band_penalty"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}.")
        if not (self.ce_weight > 0 or self.kd_weight > 0 or self.uses_dtw):
            raise ValueError("every term is off (ce_weight = kd_weight = 0, no DTW): set ce_weight or kd_weight > 0.")
        for name in ("temperature", "gamma"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}.")
        if not 0 < self.skew < 1:
            raise ValueError(f"skew must lie strictly between 0 and 1 (the paper uses 0.1), got {self.skew!r}.")
        if not 0 <= self.band_alpha <= 1:
            raise ValueError(f"band_alpha must lie in [0, 1], got {self.band_alpha!r}.")
        check_divergence(self.divergence)
        if self.student_weight_normalization not in STUDENT_WEIGHT_NORMALIZATIONS:
            raise ValueError(
                f"student_weight_normalization must be one of {STUDENT_WEIGHT_NORMALIZATIONS}, "
                f"got {self.student_weight_normalization!r}."
            )
        if self.chunk_size is not None and (
            isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int) or self.chunk_size < 1
        ):
            raise ValueError(f"chunk_size must be None (no chunking) or an int >= 1, got {self.chunk_size!r}.")
        if self.dtw_backend not in BACKENDS:
            raise ValueError(f"dtw_backend={self.dtw_backend!r} is unknown; use one of {BACKENDS}.")
        if self.dtw and not (self.dtw_hidden or self.dtw_embed):
            raise ValueError("dtw=True with dtw_hidden=False and dtw_embed=False aligns nothing: set dtw=False.")

    @property
    def uses_kd(self) -> bool:
        return self.kd_weight > 0

    @property
    def uses_dtw(self) -> bool:
        return self.dtw and self.dtw_weight > 0
