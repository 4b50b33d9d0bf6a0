"""Each model's forward runs on the batch's real tokens only (`hf_dwakd.unpadded`): the padded forward's loss and
gradients, and a model whose attention lets packed rows see each other keeps running padded."""

from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset
from transformers import LlamaForCausalLM

from hf_dwakd import DWAKDTrainer, model_side
from hf_dwakd.model_side import ModelSide
from hf_dwakd.unpadded import repadded, rows_of_different_lengths, unpadded_forward_matches, unpadded_inputs

from testing_utils import ROWS, make_config, shared_tokenizers, tiny_causal_lm


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
    student_tokenizer, teacher_tokenizer = shared_tokenizers()
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
    student_tokenizer = shared_tokenizers()[0]
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
    student_tokenizer = shared_tokenizers()[0]
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


class IgnoresPositionIds(LlamaForCausalLM):
    """Packed rows form one causal sequence: each row sees the rows before it."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, logits_to_keep=0, **kwargs):
        return super().forward(
            input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep, **kwargs
        )


def test_a_first_batch_of_one_row_still_finds_rows_that_see_each_other():
    tokenizer = shared_tokenizers()[0]
    model = tiny_causal_lm(tokenizer, hidden_size=16, num_layers=2, seed=1)
    model.__class__ = IgnoresPositionIds
    side = ModelSide("student", len(tokenizer), model=model)
    input_ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids}
    with pytest.warns(UserWarning, match="student's forward on unpadded rows"):
        side(batch)
    assert side.mode.rows_only and not side.mode.unpadded
    # The check ran on the row and the row cut to half: two rows of different lengths.
    ids, mask = rows_of_different_lengths(input_ids, torch.ones_like(input_ids))
    assert ids.tolist() == [[5, 6, 7, 8, 9, 10]] * 2 and mask.sum(dim=1).tolist() == [6, 3]


class LeaksIntoTheLastRow(torch.nn.Module):
    """Hidden states equal to the token ids, except that the unpadded forward shifts the last row's two tokens by
    `leak` of their size: what a model whose packed rows see each other does to a short row."""

    def __init__(self, leak):
        super().__init__()
        self.leak = leak

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        hidden = input_ids.float()[..., None].repeat(1, 1, 4)
        if position_ids is not None:
            hidden[0, -2:] *= 1 + self.leak
        return SimpleNamespace(hidden_states=(hidden,))


def test_leakage_into_one_short_row_is_not_averaged_away():
    input_ids = torch.randint(1, 100, (10, 40))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[-1, 2:] = 0  # nine rows of 40 tokens, then one of 2
    assert unpadded_forward_matches(LeaksIntoTheLastRow(0.0), input_ids, attention_mask)
    # 0.5 % in 2 tokens of 362: a mean difference of 3e-5 of the mean value, the largest error of that row 5e-3.
    assert not unpadded_forward_matches(LeaksIntoTheLastRow(5e-3), input_ids, attention_mask)


def test_a_model_without_position_ids_runs_padded_without_the_check(tmp_path, monkeypatch):
    from transformers import BloomConfig, BloomForCausalLM

    tokenizer = shared_tokenizers()[0]
    torch.manual_seed(1)
    config = BloomConfig(vocab_size=len(tokenizer), hidden_size=16, n_layer=2, n_head=2, pad_token_id=0)
    student = BloomForCausalLM(config)

    def no_check(*args, **kwargs):
        raise AssertionError("the unpadded forward was checked on a model that takes no position ids")

    monkeypatch.setattr(model_side, "unpadded_forward_matches", no_check)
    trainer = DWAKDTrainer(
        model=student,
        args=make_config(tmp_path, kd_method="sft"),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tokenizer,
    )
    batch = dict(trainer.data_collator([trainer.train_dataset[i] for i in range(3)]))
    trainer.compute_loss(trainer.model, batch)
    assert trainer.student_side.mode.rows_only and not trainer.student_side.mode.unpadded


def test_every_process_takes_the_decision_of_the_most_careful_one(monkeypatch):
    """Another process found that the unpadded forward differs (its all-reduce minimum is 0): this one runs padded
    too, although its own check passed."""
    tokenizer = shared_tokenizers()[0]
    side = ModelSide("student", len(tokenizer), model=tiny_causal_lm(tokenizer, hidden_size=16, seed=1))
    reduced = []

    def all_reduce(value, op):
        reduced.append(int(value))
        value.zero_() if len(reduced) == 2 else None  # the second decision: unpadded

    monkeypatch.setattr(model_side.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(model_side.dist, "all_reduce", all_reduce)
    input_ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    with pytest.warns(UserWarning, match="unpadded rows"):
        mode = side.settle(side.model, input_ids, (input_ids > 0).long())
    assert reduced == [1, 1]  # this process's own checks passed
    assert mode.rows_only and not mode.unpadded


def test_mixed_precision_rounding_keeps_the_unpadded_forward(tmp_path):
    """Under bf16 autocast the two forwards round differently by 16-bit amounts: not a reason to run padded."""
    student_tokenizer, teacher_tokenizer = shared_tokenizers()
    trainer = DWAKDTrainer(
        model=tiny_causal_lm(student_tokenizer, hidden_size=16, num_layers=2, seed=1),
        teacher_model=tiny_causal_lm(teacher_tokenizer, hidden_size=24, num_layers=2, seed=2),
        args=make_config(tmp_path, bf16=True),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=student_tokenizer,
        teacher_processing_class=teacher_tokenizer,
    )
    batch = dict(trainer.data_collator([trainer.train_dataset[i] for i in range(len(ROWS))]))
    trainer.compute_loss(trainer.model, batch)
    assert trainer.student_side.mode.unpadded and trainer.teacher_side.mode.unpadded
