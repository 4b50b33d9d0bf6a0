"""`TeacherRole`: one teacher of a `DWAKDTrainer` run and what the trainer holds for it."""

from dataclasses import dataclass
from typing import Any


@dataclass
class TeacherRole:
    """One teacher: its `name` (logs and projector files), its `weight` (normalised `teacher_weights`), the
    `prefix` of its columns in a batch, its `tokenizer`, the `side` that turns a batch into its `SideOutputs`, the
    live `model` or the `cached` `LightTeacher` (read from `cache_dir`), its `hidden_size`, and the method's
    `aligner` for it (mined)."""

    name: str
    weight: float
    prefix: str
    tokenizer: Any
    side: Any = None
    model: Any = None
    cached: Any = None
    cache_dir: Any = None
    hidden_size: int = 0
    aligner: Any = None
