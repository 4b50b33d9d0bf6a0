"""MinED vocabulary map (FuseLLM, Wan et al. 2024): every teacher token id -> the student token id whose text is
nearest by minimum edit distance, built once per tokenizer pair and cached on disk.

Texts are compared as raw bytes (see `token_text`), so "Ġworld" and "▁world" match exactly. Tokens with no exact
match take the nearest student token by edit distance (a bounded search, `nearest_strings`). Special tokens
stand for no text: a teacher special token maps to the student's token of the same role (eos, bos, unk, pad),
else by its literal content like any other token; student special tokens are only ever matched exactly.
"""

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from hf_dwakd.baselines.edit_distance import nearest_strings
from hf_dwakd.baselines.token_text import TokenTexts, token_texts

MAP_FORMAT = "mined-vocab-map-v1"  # part of the cache key: change it when the construction changes
ROLES = ("eos_token_id", "bos_token_id", "unk_token_id", "pad_token_id")
DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hf_dwakd" / "mined"


def _role_ids(tokenizer) -> list:
    return [getattr(tokenizer, role, None) for role in ROLES]


def vocabulary_key(teacher_tokenizer, student_tokenizer) -> str:
    """A hash of both vocabularies (token strings, ids, special-token roles) and of the map's construction."""
    digest = hashlib.sha256(MAP_FORMAT.encode())
    for tokenizer in (teacher_tokenizer, student_tokenizer):
        vocabulary = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
        digest.update(repr((len(tokenizer), vocabulary, _role_ids(tokenizer))).encode("utf-8"))
    return digest.hexdigest()


def _special_by_role(teacher_tokenizer, student_tokenizer) -> dict[int, int]:
    mapping = {}
    for teacher_id, student_id in zip(_role_ids(teacher_tokenizer), _role_ids(student_tokenizer)):
        if teacher_id is not None and student_id is not None and teacher_id not in mapping:
            mapping[teacher_id] = student_id
    return mapping


def _map_texts(teacher: TokenTexts, student: TokenTexts, by_role: dict[int, int]) -> np.ndarray:
    exact = {}
    for student_id, text in enumerate(student.texts):
        exact.setdefault(text, student_id)  # the lowest id wins among duplicate texts
    mapping = np.full(len(teacher.texts), -1, dtype=np.int64)
    unmatched = []
    for teacher_id, text in enumerate(teacher.texts):
        if teacher_id in by_role:
            mapping[teacher_id] = by_role[teacher_id]
        elif text in exact:
            mapping[teacher_id] = exact[text]
        else:
            unmatched.append(teacher_id)
    candidates = [student_id for student_id in range(len(student.texts)) if student_id not in student.special]
    if unmatched:
        nearest, _ = nearest_strings([teacher.texts[i] for i in unmatched], [student.texts[i] for i in candidates])
        mapping[unmatched] = np.asarray(candidates)[nearest]
    return mapping


def build_vocab_map(teacher_tokenizer, student_tokenizer) -> torch.Tensor:
    """(len(teacher_tokenizer),) long tensor: teacher token id -> student token id. No cache; see `load_vocab_map`."""
    teacher, student = token_texts(teacher_tokenizer), token_texts(student_tokenizer)
    return torch.from_numpy(_map_texts(teacher, student, _special_by_role(teacher_tokenizer, student_tokenizer)))


def load_vocab_map(teacher_tokenizer, student_tokenizer, cache_dir: str | os.PathLike | None = None) -> torch.Tensor:
    """`build_vocab_map`, read from `cache_dir` when this pair was built before, else built and written there.

    The file name is `vocabulary_key` of the pair; it is written atomically, so processes may share the folder.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    path = cache_dir / f"{vocabulary_key(teacher_tokenizer, student_tokenizer)}.npy"
    if path.is_file():
        cached = np.load(path)
        if cached.shape == (len(teacher_tokenizer),):
            return torch.from_numpy(cached)
    mapping = build_vocab_map(teacher_tokenizer, student_tokenizer)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache_dir, suffix=".npy.tmp", delete=False) as handle:
        np.save(handle, mapping.numpy())
    os.replace(handle.name, path)
    return mapping
