"""One example as the two models see it in training: its collated batch, its `SideOutputs`, its response tokens."""

import torch
from datasets import Dataset

from ..data import DistillationCollator, prepare_distillation_dataset
from ..objective import SideOutputs, shift_for_next_token


def example_batch(row, student_tokenizer, teacher_tokenizer, max_length, max_prompt_length):
    """A batch of one `row` (any format the trainer reads), tokenized and collated exactly as in training."""
    prepared = prepare_distillation_dataset(
        Dataset.from_list([row]), student_tokenizer, teacher_tokenizer, max_length, max_prompt_length
    )
    return DistillationCollator(student_tokenizer.pad_token_id, teacher_tokenizer.pad_token_id)([prepared[0]])


@torch.no_grad()
def example_sides(student_model, teacher_model, batch, student_vocab_size, teacher_vocab_size):
    """`(student, teacher)` `SideOutputs` of a collated batch: one forward pass of each model, in eval mode.

    The only place where the inspection turns models into the objective's inputs (like the trainer's
    `_side_outputs`); the models' train/eval modes are restored afterwards.
    """
    sides = []
    for model, prefix, vocab_size in (
        (student_model, "", student_vocab_size),
        (teacher_model, "teacher_", teacher_vocab_size),
    ):
        device = next(model.parameters()).device
        input_ids = batch[f"{prefix}input_ids"].to(device)
        was_training = model.training
        model.eval()
        try:
            outputs = model(
                input_ids=input_ids,
                attention_mask=batch[f"{prefix}attention_mask"].to(device),
                output_hidden_states=True,
                use_cache=False,
                logits_to_keep=1,  # the losses apply the output layer to the rows they read
            )
            embeddings = model.get_input_embeddings()(input_ids)  # the embedding layer alone, not a second forward
        finally:
            model.train(was_training)
        labels = batch[f"{prefix}labels"].to(device)
        output_layer = model.get_output_embeddings()
        sides.append(
            shift_for_next_token(
                None,
                outputs.hidden_states[-1],
                embeddings,
                labels,
                output_layer.weight,
                vocab_size,
                output_layer=output_layer,
            )
        )
    return tuple(sides)


def response_tokens(side: SideOutputs, tokenizer) -> list[str]:
    """The response tokens of the batch's first example, each decoded alone; line breaks, tabs and tokens of
    spaces alone made visible."""
    ids = side.labels[0][side.response_mask[0]].tolist()
    texts = [tokenizer.decode([token_id]).replace("\n", "\\n").replace("\t", "\\t") for token_id in ids]
    return [text if text.strip() else "·" * len(text) for text in texts]
