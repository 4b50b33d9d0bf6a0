"""Which teacher target tokens cover the characters of each student target token, from the two tokenizations.

Both sides tokenize the same response text, so the bytes their response tokens stand for are the same text (up to
the prompt characters a token straddling the boundary carries, and special tokens, which stand for none). Each
side's response becomes one byte string, the two strings are matched, and the overlap of tokens i and j is the
number of matched bytes that i and j both carry. A position's target is its label, so counts pair positions whose
*targets* overlap.
"""

import difflib
from dataclasses import dataclass

import numpy as np

from ..baselines.token_text import token_texts


@dataclass(frozen=True)
class TokenBytes:
    """`texts[id]`: the bytes token `id` adds to the text (b"" for special tokens); `eos_token_id`."""

    texts: list[bytes]
    eos_token_id: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "TokenBytes":
        vocabulary = token_texts(tokenizer)
        texts = [b"" if index in vocabulary.special else text for index, text in enumerate(vocabulary.texts)]
        return cls(texts=texts, eos_token_id=tokenizer.eos_token_id)

    def pieces(self, token_ids) -> list[bytes]:
        return [self.texts[index] if 0 <= index < len(self.texts) else b"" for index in token_ids]


def target_overlap(
    student_targets: list[int], teacher_targets: list[int], student: TokenBytes, teacher: TokenBytes
) -> np.ndarray:
    """(n, m) int64: bytes of the response text that student target i and teacher target j both carry.

    A final EOS on both sides (the response's end, which carries no text) counts as one shared byte, so the two
    positions that predict the end are paired. Targets that carry no matched byte (special tokens, straddled
    prompt characters) have an all-zero row or column: the fit skips them.
    """
    student_pieces, teacher_pieces = student.pieces(student_targets), teacher.pieces(teacher_targets)
    n, m = len(student_pieces), len(teacher_pieces)
    counts = np.zeros(n * m, dtype=np.int64)
    student_text, teacher_text = b"".join(student_pieces), b"".join(teacher_pieces)
    student_owner = np.repeat(np.arange(n), [len(piece) for piece in student_pieces])
    teacher_owner = np.repeat(np.arange(m), [len(piece) for piece in teacher_pieces])
    pairs = [
        student_owner[a : a + size] * m + teacher_owner[b : b + size]
        for a, b, size in matching_blocks(student_text, teacher_text)
    ]
    if pairs:
        counts += np.bincount(np.concatenate(pairs), minlength=n * m)
    overlap = counts.reshape(n, m)
    if n and m and student_targets[-1] == student.eos_token_id and teacher_targets[-1] == teacher.eos_token_id:
        overlap[-1, -1] += 1
    return overlap


def matching_blocks(a: bytes, b: bytes) -> list[tuple[int, int, int]]:
    """`(start in a, start in b, size)` of the byte runs matched between `a` and `b`, in order.

    The common prefix and suffix are matched directly (most responses differ, if at all, by a straddled prompt
    character at the start); difflib matches the rest.
    """
    limit = min(len(a), len(b))
    prefix = 0
    while prefix < limit and a[prefix] == b[prefix]:
        prefix += 1
    suffix = 0
    while suffix < limit - prefix and a[len(a) - 1 - suffix] == b[len(b) - 1 - suffix]:
        suffix += 1
    blocks = [(0, 0, prefix)] if prefix else []
    middle_a, middle_b = a[prefix : len(a) - suffix], b[prefix : len(b) - suffix]
    if middle_a and middle_b:
        matcher = difflib.SequenceMatcher(None, middle_a, middle_b, autojunk=False)
        blocks += [(prefix + i, prefix + j, size) for i, j, size in matcher.get_matching_blocks() if size]
    if suffix:
        blocks.append((len(a) - suffix, len(b) - suffix, suffix))
    return blocks
