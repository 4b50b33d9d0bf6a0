"""One rule decides whether a model's logits are its output layer on its last hidden state (`logit_rule`): the
config's fields first, a numeric check second; the trainer, the teacher cache build and `inspect` share it."""

import pytest
import torch
from datasets import Dataset
from transformers import CohereConfig, Gemma2Config, LlamaConfig

from hf_dwakd import DWAKDTrainer
from hf_dwakd.inspection.example import example_batch, example_sides
from hf_dwakd.logit_rule import logit_postprocessing, reproduces_logits
from hf_dwakd.model_side import ModelSide
from hf_dwakd.teacher_cache import build_teacher_cache

from testing_utils import ROWS, make_config, shared_tokenizers, tiny_causal_lm

# Soft-capping at a million changes no logit of a tiny model beyond rounding: only the config can tell.
UNSEEN_CAP = 1e6


def test_the_config_fields_that_post_process_logits():
    assert logit_postprocessing(LlamaConfig()) == []
    assert logit_postprocessing(Gemma2Config()) == ["final_logit_softcapping=30.0"]
    assert logit_postprocessing(CohereConfig(logit_scale=0.0625)) == ["logit_scale=0.0625"]
    assert logit_postprocessing(CohereConfig(logit_scale=1.0)) == []  # a scale of 1 changes nothing


def test_the_numeric_check_allows_rounding_only():
    logits = torch.randn(3, 50) * 10
    assert reproduces_logits(logits + 1e-6, logits)
    assert not reproduces_logits(logits * 1.01, logits)
    assert reproduces_logits(logits.bfloat16(), logits)  # 16-bit rounding
    assert not reproduces_logits(logits[:, :40], logits)


def capped_model(tokenizer):
    return tiny_causal_lm(tokenizer, family="gemma3", hidden_size=16, seed=1, final_logit_softcapping=UNSEEN_CAP)


def test_the_trainer_reads_the_config_before_the_numbers(tmp_path):
    tokenizer = shared_tokenizers()[0]
    trainer = DWAKDTrainer(
        model=capped_model(tokenizer),
        args=make_config(tmp_path, kd_method="sft"),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tokenizer,
    )
    batch = dict(trainer.data_collator([trainer.train_dataset[i] for i in range(2)]))
    with pytest.warns(UserWarning, match=f"its config sets final_logit_softcapping={UNSEEN_CAP}"):
        trainer.compute_loss(trainer.model, batch)
    assert not trainer.student_side.mode.rows_only


def test_the_cache_build_refuses_by_the_same_rule(tmp_path):
    tokenizer = shared_tokenizers()[1]
    capped_model(tokenizer).save_pretrained(tmp_path / "capped")
    tokenizer.save_pretrained(tmp_path / "capped")
    args = make_config(
        tmp_path, teacher_model_name_or_path=str(tmp_path / "capped"), teacher_cache_dir=str(tmp_path / "cache")
    )
    with pytest.raises(ValueError, match=f"cannot be cached.*final_logit_softcapping={UNSEEN_CAP}"):
        build_teacher_cache(args, Dataset.from_list(ROWS[:2]), student_tokenizer=shared_tokenizers()[0])


def test_inspect_takes_the_full_logits_of_a_model_that_post_processes_them():
    student_tokenizer, teacher_tokenizer = shared_tokenizers()
    batch = example_batch(ROWS[0], student_tokenizer, teacher_tokenizer, 64, 32)
    student = ModelSide("student", len(student_tokenizer), model=tiny_causal_lm(student_tokenizer, seed=1))
    teacher = ModelSide("teacher", len(teacher_tokenizer), prefix="teacher_", model=capped_model(teacher_tokenizer))
    with pytest.warns(UserWarning, match="teacher's logits are not its output layer"):
        student_side, teacher_side = example_sides(student, teacher, batch)
    assert student_side.logits is None and student_side.output_layer is not None  # rows only
    assert teacher_side.logits is not None and teacher_side.output_layer is None  # the model's own logits
