"""Exact offline teacher cache: the teacher's last hidden states at the response positions, computed once.

Everything the objectives read from the teacher is its token ids, its input embeddings and its logits and last
hidden states at the response positions; the logits there are its output layer applied to that state. So a run
with `DWAKDConfig(teacher_cache_dir=...)` keeps only the teacher's embedding and output layers in memory and reads
the states from the cache (`build_teacher_cache`, or `hf-dwakd cache-teacher`).
"""

from .build import build_teacher_cache, shard_range
from .light_teacher import CachedTeacherSide, LightTeacher, cached_teacher_outputs, load_light_teacher
from .store import HIDDEN_COLUMN, STORAGE_DTYPES

__all__ = [
    "CachedTeacherSide",
    "HIDDEN_COLUMN",
    "STORAGE_DTYPES",
    "LightTeacher",
    "build_teacher_cache",
    "cached_teacher_outputs",
    "load_light_teacher",
    "shard_range",
]
