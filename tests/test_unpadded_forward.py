"""Each model's forward runs on the batch's real tokens only (`hf_dwakd.unpadded`): the padded forward's loss and
gradients, and a model whose attention lets packed rows see each other keeps running padded."""

import pytest
import torch
from datasets import Dataset
from transformers import LlamaForCausalLM

from hf_dwakd import DWAKDTrainer
from hf_dwakd.unpadded import repadded, unpadded_inputs

from testing_utils import ROWS, load_tokenizer, make_config, tiny_causal_lm


def test_unpadded_inputs_and_repadded_follow_the_attention_mask():
    input_ids = torch.tensor([[5, 6, 7, 0], [8, 0, 0, 0], [1, 2, 3, 4]])
    attention_mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    ids, positions = unpadded_inputs(input_ids, attention_mask)
    assert ids.tolist() == [[5, 6, 7, 8, 1, 2, 3, 4]]
    assert positions.tolist() == [[0, 1, 2, 0, 0, 1, 2, 3]]
    values = torch.arange(16.0).view(1, 8, 2).requires_grad_(True)
    padded = repadded(values, attention_mask)
    expected = torch.zeros(3, 4, 2)
    expected[0, :3], expected[1, 0], expected[2] = values[0, :3], values[0, 3], values[0, 4:]
    assert torch.equal(padded.detach(), expected.detach())
    padded.sum().backward()  # each packed value lands in the padded layout exactly once
    assert torch.equal(values.grad, torch.ones_like(values))


def distillation_trainer(tmp_path, student, unpadded_forward):
    student_tokenizer, teacher_tokenizer = load_tokenizer("gpt2"), load_tokenizer("llama2")
    trainer = DWAKDTrainer(
        model=student,
        teacher_model=tiny_causal_lm(teacher_tokenizer, hidden_size=24, num_layers=2, seed=2),
        args=make_config(tmp_path, unpadded_forward=unpadded_forward),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=student_tokenizer,
        teacher_processing_class=teacher_tokenizer,
    )
    trainer.model.eval()  # no dropout: the runs compared see the same network
    return trainer


def second_batch_loss_and_gradients(trainer, batch):
    """The loss and gradients of `batch` after a first batch (which runs the checks, padded)."""
    trainer.compute_loss(trainer.model, batch)
    trained = [parameter for parameter in trainer.model.parameters() if parameter.requires_grad]
    loss = trainer.compute_loss(trainer.model, batch)
    return loss, torch.autograd.grad(loss, trained)


@pytest.mark.parametrize("student_family", ["llama", "gpt2", "gemma3"])
def test_the_unpadded_forward_gives_the_padded_loss_and_gradients(tmp_path, student_family):
    student_tokenizer = load_tokenizer("gpt2")
    results, embedding_inputs = {}, []
    for unpadded in (False, True):
        student = tiny_causal_lm(student_tokenizer, family=student_family, hidden_size=16, num_layers=2, seed=1)
        trainer = distillation_trainer(tmp_path / str(unpadded), student, unpadded)
        batch = dict(trainer.data_collator([trainer.train_dataset[i] for i in range(len(ROWS))]))
        assert (batch["attention_mask"] == 0).any() and (batch["teacher_attention_mask"] == 0).any()
        if unpadded:
            student.get_input_embeddings().register_forward_hook(
                lambda module, inputs, output: embedding_inputs.append(inputs[0].shape)
            )
        results[unpadded] = second_batch_loss_and_gradients(trainer, batch)
        assert (trainer.student_side.mode.unpadded, trainer.teacher_side.mode.unpadded) == (unpadded, unpadded)
    # The second batch's student forward saw the real tokens only, as one row.
    assert embedding_inputs[-1] == (1, int(batch["attention_mask"].sum()))
    (padded_loss, padded_gradients), (unpadded_loss, unpadded_gradients) = results[False], results[True]
    torch.testing.assert_close(unpadded_loss, padded_loss, rtol=1e-5, atol=0)
    # Relative to the largest gradient: a parameter whose gradient is a sum of terms that nearly cancel keeps
    # the rounding of those terms, which differs between the two attention paths.
    scale = max(gradient.abs().max() for gradient in padded_gradients)
    for unpadded_gradient, padded_gradient in zip(unpadded_gradients, padded_gradients):
        assert (unpadded_gradient - padded_gradient).abs().max() <= 1e-5 * scale


def test_a_model_whose_attention_ignores_position_ids_runs_padded(tmp_path):
    class IgnoresPositionIds(LlamaForCausalLM):  # packed rows then form one causal sequence: they see each other
        def forward(self, input_ids=None, attention_mask=None, position_ids=None, logits_to_keep=0, **kwargs):
            return super().forward(
                input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep, **kwargs
            )

    student_tokenizer = load_tokenizer("gpt2")
    losses = {}
    for unpadded in (False, True):
        student = tiny_causal_lm(student_tokenizer, hidden_size=16, num_layers=2, seed=1)
        student.__class__ = IgnoresPositionIds
        with torch.no_grad():  # attention large enough against the residual stream that seeing other rows shows
            for name, parameter in student.named_parameters():
                if "self_attn" in name:
                    parameter.mul_(25)
        trainer = distillation_trainer(tmp_path / str(unpadded), student, unpadded)
        batch = dict(trainer.data_collator([trainer.train_dataset[i] for i in range(len(ROWS))]))
        if unpadded:
            with pytest.warns(UserWarning, match="student's forward on unpadded rows"):
                trainer.compute_loss(trainer.model, batch)
        losses[unpadded] = trainer.compute_loss(trainer.model, batch).detach()
        assert (trainer.student_side.mode.unpadded, trainer.teacher_side.mode.unpadded) == (False, unpadded)
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-5, atol=0)
