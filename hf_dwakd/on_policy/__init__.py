"""On-policy distillation across tokenizers (`lmbda`, `seq_kd`): some steps train on responses a model samples,
rebuilt for both tokenizers by the data pipeline, so every method with a teacher runs on them unchanged."""

from .responses import METRIC_PREFIXES, SAMPLED_BY, STUDENT, TEACHER, ResponseSampler, StepSamples
from .schedule import is_on_policy_step, sampling_seed

__all__ = [
    "METRIC_PREFIXES",
    "SAMPLED_BY",
    "STUDENT",
    "TEACHER",
    "ResponseSampler",
    "StepSamples",
    "is_on_policy_step",
    "sampling_seed",
]
