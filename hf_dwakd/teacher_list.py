"""Several teachers in one run: the list forms of the teacher fields, checked and read one entry per teacher.

`teacher_model_name_or_path` (or the trainer's `teacher_model`) may name several teachers; then
`teacher_tokenizer_name_or_path`, `teacher_cache_dir` and `teacher_weights` hold one entry each, in the same
order (docs/method.md, Several teachers). A list of one is the single teacher, exactly as without a list.
Pure Python: the config reads it before anything is loaded.
"""

import math
import os
import re

PER_TEACHER_FIELDS = ("teacher_tokenizer_name_or_path", "teacher_cache_dir", "teacher_weights")
NO_CACHE = ("", "none", "null")  # a `teacher_cache_dir` entry of a live teacher, as the command line can write it


def single_or_list(value):
    """A list or tuple of one entry is that entry; a longer one a list; anything else unchanged."""
    if isinstance(value, (list, tuple)):
        return value[0] if len(value) == 1 else list(value)
    return value


def cache_dir_entry(value):
    """A `teacher_cache_dir` entry: None for a live teacher (None, "" or "none" on the command line)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in NO_CACHE):
        return None
    return value


def teacher_count(value) -> int:
    """How many teachers `value` (a name, a model, or a list of them) names; 0 for None."""
    if value is None:
        return 0
    return len(value) if isinstance(value, (list, tuple)) else 1


def per_teacher(value, count: int) -> list:
    """`value` as one entry per teacher: a list as it is, None as Nones, a single value for the single teacher."""
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value] * count


def check_per_teacher_fields(args, count: int, source: str) -> None:
    """Refuse, naming the field, per-teacher lists whose length is not `count` (the number of teachers `source`
    names) and weights that are negative, not finite or all zero."""
    for name in PER_TEACHER_FIELDS:
        value = getattr(args, name)
        if isinstance(value, (list, tuple)) and len(value) != count:
            raise ValueError(
                f"`{name}` has {len(value)} entries but {source} names {count} teacher(s): give one entry per "
                "teacher, in the same order."
            )
        if count > 1 and value is not None and not isinstance(value, (list, tuple)) and name != "teacher_weights":
            raise ValueError(
                f"`{name}` is the single value {value!r} but {source} names {count} teachers: give a list with one "
                "entry per teacher, in the same order."
            )
    weights = args.teacher_weights
    if weights is not None:
        weights = per_teacher(weights, count)
        bad = [w for w in weights if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w)]
        if bad or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(
                f"`teacher_weights` must be finite numbers >= 0, not all 0 (one per teacher), got "
                f"{args.teacher_weights}."
            )


def normalised_weights(weights, count: int) -> list[float]:
    """Each teacher's share of the distillation: `teacher_weights` divided by their sum (equal when unset)."""
    if weights is None:
        return [1.0 / count] * count
    weights = [float(w) for w in per_teacher(weights, count)]
    return [w / sum(weights) for w in weights]


def teacher_prefix(index: int) -> str:
    """The column prefix of teacher `index` (0-based) in prepared rows and batches: `teacher_`, `teacher_2_`, ..."""
    return "teacher_" if index == 0 else f"teacher_{index + 1}_"


def teacher_names(names_or_paths) -> list[str]:
    """A short name per teacher for logs and projector files: the last part of its name or path (characters
    other than letters, digits, `-` and `_` become `_`), `teacher<k>` when it has none, `-<k>` added to repeats
    (k counts from 1)."""
    names = []
    for index, value in enumerate(names_or_paths, start=1):
        base = os.path.basename(os.path.normpath(str(value))) if value else ""
        name = re.sub(r"[^A-Za-z0-9_-]+", "_", base).strip("_") or f"teacher{index}"
        names.append(name)
    return [f"{name}-{index}" if names.count(name) > 1 else name for index, name in enumerate(names, start=1)]
