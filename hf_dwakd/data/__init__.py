"""The two-tokenizer data pipeline: one prompt/response text, token ids and labels for student and teacher."""

from .collator import PROMPT_COLUMN, DistillationCollator
from .formats import ACCEPTED_FORMATS, check_dataset_columns
from .pipeline import encode_example, prepare_distillation_dataset

__all__ = [
    "ACCEPTED_FORMATS",
    "PROMPT_COLUMN",
    "DistillationCollator",
    "check_dataset_columns",
    "encode_example",
    "prepare_distillation_dataset",
]
