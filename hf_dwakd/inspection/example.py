"""One example as the two models see it in training: its collated batch, its `SideOutputs`, its response tokens."""

import torch
from datasets import Dataset

from ..data import DistillationCollator, prepare_distillation_dataset
from ..objective import SideOutputs


def example_batch(row, student_tokenizer, teacher_tokenizer, max_length, max_prompt_length):
    """A batch of one `row` (any format the trainer reads), tokenized and collated exactly as in training;
    `teacher_tokenizer` may be a list (several teachers, their columns `teacher_`, `teacher_2_`, ...)."""
    prepared = prepare_distillation_dataset(
        Dataset.from_list([row]), student_tokenizer, teacher_tokenizer, max_length, max_prompt_length
    )
    if isinstance(teacher_tokenizer, list):
        teacher_pad_ids = [tokenizer.pad_token_id for tokenizer in teacher_tokenizer]
    else:
        teacher_pad_ids = teacher_tokenizer.pad_token_id
    return DistillationCollator(student_tokenizer.pad_token_id, teacher_pad_ids)([prepared[0]])


@torch.no_grad()
def example_sides(student, teacher, batch, model=None):
    """`(student, teacher)` `SideOutputs` of a collated batch: one forward pass of each side, its model in eval
    mode (restored afterwards). `student` and `teacher` are `ModelSide`s (a cached run's teacher side too);
    `model` is the model the student side runs (None: its own)."""
    student_model = model if model is not None else student.model
    models = [m for m in (student_model, getattr(teacher, "model", None)) if m is not None]
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        device = next(student_model.parameters()).device
        batch = {key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()}
        return student(batch, student_model)[0], teacher(batch)[0]
    finally:
        for m, training in zip(models, modes):
            m.train(training)


def response_tokens(side: SideOutputs, tokenizer) -> list[str]:
    """The response tokens of the batch's first example, each decoded alone; line breaks, tabs and tokens of
    spaces alone made visible."""
    ids = side.labels[0][side.response_mask[0]].tolist()
    texts = [tokenizer.decode([token_id]).replace("\n", "\\n").replace("\t", "\\t") for token_id in ids]
    return [text if text.strip() else "·" * len(text) for text in texts]
