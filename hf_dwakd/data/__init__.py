"""The two-tokenizer data pipeline: one prompt/response text, token ids and labels for student and teacher."""

from .collator import DistillationCollator
from .formats import ACCEPTED_FORMATS, check_dataset_columns
from .pipeline import prepare_distillation_dataset

__all__ = ["ACCEPTED_FORMATS", "DistillationCollator", "check_dataset_columns", "prepare_distillation_dataset"]
