"""Pad prepared rows of both models into one batch of tensors."""

import torch
from torch.nn.utils.rnn import pad_sequence

from ..objective.outputs import IGNORE_INDEX

# A teacher cache's column (`teacher_cache.store`): each row's (response positions, d) teacher states.
TEACHER_HIDDEN_COLUMN = "teacher_hidden"
# The prompts kept for on-policy sampling (`prepare_distillation_dataset(keep_prompts=True)`), passed as a list.
PROMPT_COLUMN = "prompt"


class DistillationCollator:
    """Right-pads each side to its longest row (rounded up to `pad_to_multiple_of`); labels pad with -100.

    Rows read from a teacher cache also hold `teacher_hidden` arrays (n_i, d): they are stacked into one
    (B, max n_i, d) tensor, zero-padded, in their stored dtype. Rows that kept their `prompt` pass the prompts on
    as a list (strings or chat messages), for on-policy sampling.
    """

    def __init__(self, student_pad_token_id, teacher_pad_token_id, pad_to_multiple_of=None):
        for side, pad_id in (("student", student_pad_token_id), ("teacher", teacher_pad_token_id)):
            if pad_id is None:
                raise ValueError(
                    f"The {side} tokenizer has no pad token: set `{side}_tokenizer.pad_token = "
                    f"{side}_tokenizer.eos_token` (padding is masked out, so reusing EOS is safe)."
                )
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be a positive integer or None, got {pad_to_multiple_of}.")
        self.pad_token_ids = {"": student_pad_token_id, "teacher_": teacher_pad_token_id}
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, rows):
        batch = {}
        for prefix, pad_id in self.pad_token_ids.items():
            batch.update(self._pad_side(rows, prefix, pad_id))
        if TEACHER_HIDDEN_COLUMN in rows[0]:
            states = [torch.as_tensor(row[TEACHER_HIDDEN_COLUMN]) for row in rows]
            batch[TEACHER_HIDDEN_COLUMN] = pad_sequence(states, batch_first=True)
        if PROMPT_COLUMN in rows[0]:
            batch[PROMPT_COLUMN] = [row[PROMPT_COLUMN] for row in rows]
        return batch

    def _pad_side(self, rows, prefix, pad_id):
        width = max(len(row[f"{prefix}input_ids"]) for row in rows)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        fills = {"input_ids": pad_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        padded = {name: torch.full((len(rows), width), fill, dtype=torch.long) for name, fill in fills.items()}
        for index, row in enumerate(rows):
            for name, tensor in padded.items():
                values = torch.as_tensor(row[f"{prefix}{name}"], dtype=torch.long)
                tensor[index, : len(values)] = values
        return {f"{prefix}{name}": tensor for name, tensor in padded.items()}
