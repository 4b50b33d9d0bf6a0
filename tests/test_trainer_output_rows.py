"""The trainer applies the models' output layers only to the response rows the losses read: the same loss and
gradients as the full forward, a fallback for models whose logits are not their output layer on the last hidden
state, and evaluation still given the student's logits at every position."""

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import LlamaForCausalLM

from hf_dwakd import DWAKDTrainer

from testing_utils import ROWS, make_config, make_trainer, shared_tokenizers, tiny_causal_lm


def sft_trainer(tmp_path, model, tokenizer, **overrides):
    return DWAKDTrainer(
        model=model,
        args=make_config(tmp_path, kd_method="sft", **overrides),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tokenizer,
    )


def first_batch(trainer, size=3):
    return dict(trainer.data_collator([trainer.train_dataset[i] for i in range(size)]))


def model_loss(model, batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_the_output_layer_on_the_last_hidden_state_gives_the_models_loss(tmp_path, family):
    tokenizer = shared_tokenizers()[0]
    model = tiny_causal_lm(tokenizer, family=family, hidden_size=16, seed=1)
    model.eval()  # no dropout: the two forwards below see the same network
    trainer = sft_trainer(tmp_path, model, tokenizer)
    batch = first_batch(trainer)
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
        student, logits = trainer.student_side(batch, trainer.model)
        expected = model_loss(model, batch)
    assert trainer.student_side.mode.rows_only
    # After the first batch's check, the model's own forward applies its output layer to no position at all.
    assert student.logits is None and logits.shape[1] == 0
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=0)


def test_a_model_with_final_logit_softcapping_falls_back_to_its_full_forward(tmp_path):
    tokenizer = shared_tokenizers()[0]
    # Soft-capping at 0.05 is small enough to change every logit.
    model = tiny_causal_lm(tokenizer, family="gemma3", hidden_size=16, seed=1, final_logit_softcapping=0.05).eval()
    trainer = sft_trainer(tmp_path, model, tokenizer)
    batch = first_batch(trainer)
    with torch.no_grad(), pytest.warns(UserWarning, match="student's logits are not its output layer"):
        loss = trainer.compute_loss(trainer.model, batch)
    assert not trainer.student_side.mode.rows_only
    with torch.no_grad():
        torch.testing.assert_close(loss, model_loss(model, batch), rtol=1e-5, atol=0)
        again = trainer.compute_loss(trainer.model, batch)  # decided once: no second check, no second warning
    torch.testing.assert_close(again, loss)


def test_a_wrapper_scaling_the_logits_falls_back_to_its_full_forward(tmp_path):
    tokenizer = shared_tokenizers()[0]

    class ScaledLogits(LlamaForCausalLM):
        def forward(self, *args, logits_to_keep=0, **kwargs):
            outputs = super().forward(*args, logits_to_keep=logits_to_keep, **kwargs)
            outputs.logits = 3 * outputs.logits
            return outputs

    model = tiny_causal_lm(tokenizer, hidden_size=16, seed=1)
    model.__class__ = ScaledLogits
    trainer = sft_trainer(tmp_path, model.eval(), tokenizer)
    batch = first_batch(trainer)
    with torch.no_grad(), pytest.warns(UserWarning, match="not its output layer"):
        loss = trainer.compute_loss(trainer.model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten())
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=0)


@pytest.mark.parametrize(
    "student_family, padding, lora_modules",
    [
        # LoRA (TRL's SFTTrainer refuses an adapter on `lm_head` before any of our code runs)
        ("llama", 0, ["q_proj", "v_proj"]),
        ("gpt2", 47, None),  # tied embeddings, a padded output layer, full fine-tuning
    ],
)
def test_rows_only_and_full_forward_give_the_same_loss_and_gradients(
    tmp_path, student_family, padding, lora_modules
):
    student_tokenizer, teacher_tokenizer = shared_tokenizers()
    student = tiny_causal_lm(
        student_tokenizer, family=student_family, hidden_size=16, vocab_size=len(student_tokenizer) + padding, seed=1
    )
    peft_config = None
    if lora_modules is not None:
        peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=lora_modules, init_lora_weights=False)
    trainer = DWAKDTrainer(
        model=student,
        teacher_model=tiny_causal_lm(teacher_tokenizer, hidden_size=24, seed=2),
        args=make_config(tmp_path, kd_chunk_size=5, unpadded_forward=False),  # the teacher's forward as in both
        train_dataset=Dataset.from_list(ROWS),
        processing_class=student_tokenizer,
        teacher_processing_class=teacher_tokenizer,
        peft_config=peft_config,
    )
    trainer.model.eval()  # no dropout
    batch = first_batch(trainer)
    trained = {name: p for name, p in trainer.model.named_parameters() if p.requires_grad}

    def loss_and_gradients(return_outputs):
        loss = trainer.compute_loss(trainer.model, batch, return_outputs=return_outputs)
        loss = loss[0] if return_outputs else loss
        return loss, dict(zip(trained, torch.autograd.grad(loss, list(trained.values()), allow_unused=True)))

    rows_loss, rows_gradients = loss_and_gradients(return_outputs=False)
    assert trainer.student_side.mode.rows_only and trainer.teacher_side.mode.rows_only
    full_loss, full_gradients = loss_and_gradients(return_outputs=True)  # the student's full forward
    torch.testing.assert_close(rows_loss, full_loss, rtol=1e-5, atol=0)
    if lora_modules is None:  # the tied output layer learns through the rows only
        assert rows_gradients["transformer.wte.weight"].abs().sum() > 0
    for name, full in full_gradients.items():
        if full is None:
            assert rows_gradients[name] is None, name
        else:
            assert (rows_gradients[name] - full).abs().max() <= 1e-5 * full.abs().max(), name


def test_evaluation_gets_the_students_logits_at_every_position(tmp_path):
    trainer = make_trainer(tmp_path, per_device_eval_batch_size=2)
    trainer.model.eval()
    batch = trainer._prepare_inputs(first_batch(trainer, size=2))
    loss, logits, labels = trainer.prediction_step(trainer.model, batch, prediction_loss_only=False)
    with torch.no_grad():
        expected = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(logits, expected)
    assert torch.equal(labels, batch["labels"])
    assert loss > 0

    seen = []

    def compute_metrics(prediction):
        seen.append(prediction.predictions.shape)
        return {"argmax_first": float(prediction.predictions[0, 0].argmax())}

    trainer.compute_metrics = compute_metrics
    metrics = trainer.evaluate(trainer.train_dataset.select(range(4)))
    assert "eval_argmax_first" in metrics and seen[0][0] == 4 and seen[0][-1] == len(trainer.processing_class)
