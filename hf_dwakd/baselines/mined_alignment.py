"""MinED token alignment (FuseLLM, Wan et al. 2024): which teacher position each student position learns from.

Both tokenizations of one response are aligned by dynamic time warping with the edit distance of token texts as
the cost (spaces removed, as FuseLLM removes the word-start markers). A student position takes the teacher's
distribution when the path pairs its token with exactly one teacher token and the vocabulary map sends that
teacher token to the student's own token, as in FuseLLM's and DSKD's MinED; other positions get -1 (the loss
then uses the one-hot label there).

This needs only token ids and tokenizers, no model: compute it on the data side (collator or dataset map).
"""

import os

import numpy as np
import torch

from hf_dwakd.baselines.edit_distance import align_sequences
from hf_dwakd.baselines.mined_vocab import load_vocab_map
from hf_dwakd.baselines.token_text import TokenTexts, token_texts
from hf_dwakd.objective.outputs import IGNORE_INDEX


def _alignment_texts(texts: TokenTexts) -> list[bytes]:
    return [b"" if token_id in texts.special else text.replace(b" ", b"") for token_id, text in enumerate(texts.texts)]


class MinEDAligner:
    """Holds one tokenizer pair's vocabulary map (`teacher_to_student`) and token texts."""

    def __init__(self, student_tokenizer, teacher_tokenizer, cache_dir: str | os.PathLike | None = None):
        self.teacher_to_student = load_vocab_map(teacher_tokenizer, student_tokenizer, cache_dir)
        self._student_texts = _alignment_texts(token_texts(student_tokenizer))
        self._teacher_texts = _alignment_texts(token_texts(teacher_tokenizer))
        self._map = self.teacher_to_student.numpy()

    def align_tokens(self, student_ids: list[int], teacher_ids: list[int]) -> list[int]:
        """For each student token, the index of its aligned teacher token in `teacher_ids`, or -1."""
        if not student_ids or not teacher_ids:
            return [-1] * len(student_ids)
        count, partner = align_sequences(
            [self._student_texts[i] for i in student_ids], [self._teacher_texts[i] for i in teacher_ids]
        )
        mapped = self._map[np.asarray(teacher_ids)[partner]]
        aligned = (count == 1) & (mapped == np.asarray(student_ids))
        return np.where(aligned, partner, -1).tolist()

    def teacher_positions(self, student_labels: torch.Tensor, teacher_labels: torch.Tensor) -> torch.Tensor:
        """(B, L_s) long: for each student response position, the aligned teacher position, else -1.

        Pass the labels exactly as `SideOutputs.labels` holds them (next-token labels, -100 outside the
        response; for HF-style labels that is `labels[:, 1:]`): the result indexes those positions.
        """
        if student_labels.shape[0] != teacher_labels.shape[0]:
            raise ValueError(
                f"student_labels has {student_labels.shape[0]} rows and teacher_labels {teacher_labels.shape[0]}; "
                "pass the two tokenizations of the same examples."
            )
        positions = torch.full(student_labels.shape, -1, dtype=torch.long)
        for row, (student_row, teacher_row) in enumerate(zip(student_labels.cpu(), teacher_labels.cpu())):
            student_at = (student_row != IGNORE_INDEX).nonzero().flatten()
            teacher_at = (teacher_row != IGNORE_INDEX).nonzero().flatten()
            partners = torch.tensor(
                self.align_tokens(student_row[student_at].tolist(), teacher_row[teacher_at].tolist()), dtype=torch.long
            )
            aligned = partners >= 0
            positions[row, student_at[aligned]] = teacher_at[partners[aligned]]
        return positions
