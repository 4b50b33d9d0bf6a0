"""Pad prepared rows of both models into one batch of tensors."""

import torch
from torch.nn.utils.rnn import pad_sequence

from ..objective.outputs import IGNORE_INDEX
from ..teacher_list import teacher_prefix

# A teacher cache's column (`teacher_cache.store`): each row's (response positions, d) teacher states; the second
# teacher's is `teacher_2_hidden`, ... (its column prefix + "hidden").
TEACHER_HIDDEN_COLUMN = "teacher_hidden"
HIDDEN_SUFFIX = "hidden"
# The prompts kept for on-policy sampling (`prepare_distillation_dataset(keep_prompts=True)`), passed as a list.
PROMPT_COLUMN = "prompt"


class DistillationCollator:
    """Right-pads each side to its longest row (rounded up to `pad_to_multiple_of`), each side separately; labels
    pad with -100. `teacher_pad_token_id` is one id, or a list of one id per teacher.

    Rows read from a teacher cache also hold `teacher_hidden` arrays (n_i, d) (`teacher_2_hidden`, ... for the
    other teachers): each is stacked into one (B, max n_i, d) tensor, zero-padded, in its stored dtype. Rows that
    kept their `prompt` pass the prompts on as a list (strings or chat messages), for on-policy sampling.
    """

    def __init__(self, student_pad_token_id, teacher_pad_token_id, pad_to_multiple_of=None):
        teacher_pad_token_ids = teacher_pad_token_id
        if not isinstance(teacher_pad_token_ids, (list, tuple)):
            teacher_pad_token_ids = [teacher_pad_token_id]
        self.pad_token_ids = {"": student_pad_token_id}
        self.pad_token_ids |= {teacher_prefix(index): pad_id for index, pad_id in enumerate(teacher_pad_token_ids)}
        for prefix, pad_id in self.pad_token_ids.items():
            side = prefix.rstrip("_") or "student"
            if pad_id is None:
                raise ValueError(
                    f"The {side} tokenizer has no pad token: set `{side}_tokenizer.pad_token = "
                    f"{side}_tokenizer.eos_token` (padding is masked out, so reusing EOS is safe)."
                )
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be a positive integer or None, got {pad_to_multiple_of}.")
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, rows):
        batch = {}
        for prefix, pad_id in self.pad_token_ids.items():
            batch.update(self._pad_side(rows, prefix, pad_id))
            column = prefix + HIDDEN_SUFFIX
            if prefix and column in rows[0]:
                states = [torch.as_tensor(row[column]) for row in rows]
                batch[column] = pad_sequence(states, batch_first=True)
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
