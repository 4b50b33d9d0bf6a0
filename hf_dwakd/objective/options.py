"""The knobs of the DWA-KD objective, with the defaults of docs/method.md, checked when built.

Each option carries the name of the `DWAKDConfig` field that sets it, so an error here names the config's field;
the one exception is `kd_student_scale`, which the config computes from `kd_warmup_steps` at each step.
"""

import math
from dataclasses import dataclass, fields

from hf_dwakd.objective.divergences import check_divergence
from hf_dwakd.objective.weights import STUDENT_WEIGHT_NORMALIZATIONS
from hf_dwakd.ops.soft_dtw import BACKENDS


@dataclass
class DWAKDLossOptions:
    """Weights (Loss), KD (Dual-space KD), Soft-DTW alignment and band, and the Table 3 ablation switches.

    `use_entropy_weighting=False` sets every KD weight to 1 (the gate then plays no part); `use_teacher_gate=False`
    uses the student entropy alone; `student_weight_normalization` says what is normalised per sequence (see
    `weights.student_weights`); `kd_student_scale` multiplies the student-space term alone (the KD warm-up ramps it
    from 0 to 1). `use_dtw` turns the whole alignment off, `use_dtw_hidden`/`use_dtw_embed` one pair each,
    `use_dtw_band` the attention-entropy band. `kd_teacher_divergence` is the teacher space's divergence (None:
    `kd_divergence`, as in the student space). `kd_chunk_size` (tokens) bounds the vocabulary-wide memory; `None`
    computes all tokens at once.
    """

    ce_weight: float = 0.5
    kd_weight: float = 0.5
    dtw_weight: float = 0.2
    kd_temperature: float = 2.0
    kd_divergence: str = "forward_kl"
    kd_teacher_divergence: str | None = None
    kd_skew: float = 0.1
    use_entropy_weighting: bool = True
    use_teacher_gate: bool = True
    student_weight_normalization: str = "entropy"
    kd_student_scale: float = 1.0
    use_dtw: bool = True
    use_dtw_band: bool = True
    use_dtw_hidden: bool = True
    use_dtw_embed: bool = True
    dtw_gamma: float = 2.0
    dtw_band_base: float = 5.0
    dtw_band_beta: float = 2.0
    dtw_band_alpha: float = 0.7
    dtw_band_penalty: float = 1.0
    kd_chunk_size: int | None = None
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
        for name in (*weights, "dtw_band_base", "dtw_band_beta", "dtw_band_penalty"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}.")
        if not (self.ce_weight > 0 or self.kd_weight > 0 or self.uses_dtw):
            raise ValueError(
                "every term is off (ce_weight = kd_weight = 0, no DTW): set ce_weight or kd_weight > 0."
            )
        for name in ("kd_temperature", "dtw_gamma"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}.")
        if not 0 < self.kd_skew < 1:
            raise ValueError(f"kd_skew must lie strictly between 0 and 1 (the paper uses 0.1), got {self.kd_skew!r}.")
        if not 0 <= self.dtw_band_alpha <= 1:
            raise ValueError(f"dtw_band_alpha must lie in [0, 1], got {self.dtw_band_alpha!r}.")
        check_divergence(self.kd_divergence, "kd_divergence")
        if self.kd_teacher_divergence is not None:
            check_divergence(self.kd_teacher_divergence, "kd_teacher_divergence")
        if self.student_weight_normalization not in STUDENT_WEIGHT_NORMALIZATIONS:
            raise ValueError(
                f"student_weight_normalization must be one of {STUDENT_WEIGHT_NORMALIZATIONS}, "
                f"got {self.student_weight_normalization!r}."
            )
        if self.kd_chunk_size is not None and (
            isinstance(self.kd_chunk_size, bool) or not isinstance(self.kd_chunk_size, int) or self.kd_chunk_size < 1
        ):
            raise ValueError(f"kd_chunk_size must be None (no chunking) or an int >= 1, got {self.kd_chunk_size!r}.")
        if self.dtw_backend not in BACKENDS:
            raise ValueError(f"dtw_backend={self.dtw_backend!r} is unknown; use one of {BACKENDS}.")
        if self.use_dtw and not (self.use_dtw_hidden or self.use_dtw_embed):
            raise ValueError(
                "use_dtw=True with use_dtw_hidden=False and use_dtw_embed=False aligns nothing: set use_dtw=False."
            )

    @property
    def uses_kd(self) -> bool:
        return self.kd_weight > 0

    @property
    def uses_dtw(self) -> bool:
        return self.use_dtw and self.dtw_weight > 0

    @property
    def teacher_divergence(self) -> str:
        """The divergence of the teacher space: `kd_teacher_divergence`, else `kd_divergence`."""
        return self.kd_teacher_divergence or self.kd_divergence


# The options a `DWAKDConfig` field of the same name sets (all but the warm-up's per-step scale).
CONFIG_OPTIONS = tuple(option.name for option in fields(DWAKDLossOptions) if option.name != "kd_student_scale")
