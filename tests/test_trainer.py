"""DWAKDTrainer end to end on tiny random models with the two real fixture tokenizers."""

import os

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel
from safetensors.torch import load_file
from transformers import TrainerCallback

from hf_dwakd import DWAKDTrainer
from hf_dwakd.trainer import PROJECTORS_ATTRIBUTE, PROJECTORS_NAME

from testing_utils import (
    ROWS,
    UPLOADED_FILES,
    clone_parameters,
    make_config,
    make_trainer,
    record_hub_uploads,
    shared_tokenizers,
    tiny_causal_lm,
)

COMPONENTS = ["ce", "kd_student", "kd_teacher", "ce_t2s", "dtw_hidden", "dtw_embed"]


def test_full_finetuning_logs_every_component_and_updates_projectors(tmp_path):
    trainer = make_trainer(tmp_path)
    projectors_before = clone_parameters(trainer.projectors)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 3
    for entry in logged:
        for key in COMPONENTS:
            assert key in entry and entry[key] == entry[key], key  # present and not NaN
    assert "train_loss" in trainer.state.log_history[-1]
    for name, before in projectors_before.items():
        assert not torch.equal(before, trainer.projectors.state_dict()[name]), name


def test_projectors_have_their_own_learning_rate(tmp_path):
    trainer = make_trainer(tmp_path, projector_learning_rate=3e-3, max_steps=1)
    trainer.create_optimizer()
    groups = trainer.optimizer.param_groups
    projector_group = [g for g in groups if g.get("dwakd_projectors")]
    assert len(projector_group) == 1 and projector_group[0]["lr"] == 3e-3
    projector_ids = {id(p) for p in trainer.projectors.parameters()}
    assert {id(p) for p in projector_group[0]["params"]} == projector_ids
    others = {id(p) for g in groups if not g.get("dwakd_projectors") for p in g["params"]}
    assert not others & projector_ids and others


def test_lora_trains_adapter_and_projectors_but_not_base_weights(tmp_path):
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = make_trainer(tmp_path, peft_config=lora, gradient_checkpointing=True)
    assert isinstance(trainer.model, PeftModel)
    before = clone_parameters(trainer.model)
    trainer.train()
    after = dict(trainer.model.named_parameters())
    changed = {name for name, p in before.items() if not torch.equal(p, after[name].detach())}
    assert any("lora_B" in name for name in changed)
    assert any("dwakd_projectors" in name for name in changed)
    assert all("lora_" in name or "dwakd_projectors" in name for name in changed), changed
    assert all(p.requires_grad for p in trainer.projectors.parameters())


def test_lora_over_a_bf16_base_trains_float32_projectors_to_the_last_step(tmp_path):
    """Projectors follow the float32 LoRA adapters, not the frozen bf16 base: a late, small update is not lost."""
    student_tokenizer, teacher_tokenizer = shared_tokenizers()
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    before_last_step = {}

    class RecordBeforeLastStep(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step == args.max_steps - 1:
                before_last_step.update(clone_parameters(getattr(model, PROJECTORS_ATTRIBUTE)))

    trainer = DWAKDTrainer(
        model=tiny_causal_lm(student_tokenizer, hidden_size=16, seed=1).to(torch.bfloat16),
        teacher_model=tiny_causal_lm(teacher_tokenizer, hidden_size=24, seed=2).to(torch.bfloat16),
        args=make_config(tmp_path, lr_scheduler_type="cosine", projector_learning_rate=1e-5),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=student_tokenizer,
        teacher_processing_class=teacher_tokenizer,
        peft_config=lora,
        callbacks=[RecordBeforeLastStep()],
    )
    assert next(trainer.model.get_base_model().parameters()).dtype == torch.bfloat16
    assert {p.dtype for name, p in trainer.model.named_parameters() if "lora_" in name} == {torch.float32}
    assert {p.dtype for p in trainer.projectors.parameters()} == {torch.float32}
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert before_last_step
    # The last cosine step moves each weight by about 2.5e-6, below half a bf16 ulp (6e-5 at 0.02).
    for name, value in trainer.projectors.named_parameters():
        assert value.dtype == torch.float32
        assert not torch.equal(before_last_step[name], value.detach()), name


def test_gradient_accumulation_gives_the_same_loss_and_update(tmp_path):
    common = dict(max_steps=2, learning_rate=1e-3, projector_learning_rate=1e-3)
    whole = make_trainer(tmp_path / "a", per_device_train_batch_size=2, gradient_accumulation_steps=1, **common)
    split = make_trainer(tmp_path / "b", per_device_train_batch_size=1, gradient_accumulation_steps=2, **common)
    whole.train()
    split.train()
    losses = [[e["loss"] for e in t.state.log_history if "loss" in e] for t in (whole, split)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    for key in COMPONENTS:
        a = [e[key] for e in whole.state.log_history if key in e]
        b = [e[key] for e in split.state.log_history if key in e]
        assert a == pytest.approx(b, abs=1e-5), key
    # The output layers run on the response rows only, whose number differs between the whole and the split
    # batch: float32 rounding differs, and Adam's first steps blow it up on gradient entries near zero (Adam is
    # scale-invariant, so a mis-scaled gradient would show in the losses above, not here).
    split_params = dict(split.model.named_parameters())
    for name, p in whole.model.named_parameters():
        torch.testing.assert_close(p, split_params[name], atol=5e-5, rtol=0)


def test_checkpoint_and_save_model_files(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    trainer.train()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    files = set(os.listdir(checkpoint))
    assert {PROJECTORS_NAME, "model.safetensors", "config.json", "tokenizer.json", "optimizer.pt"} <= files
    weights = load_file(checkpoint / "model.safetensors")
    assert not any(key.startswith("dwakd_projectors") for key in weights)
    projectors = load_file(checkpoint / PROJECTORS_NAME)
    for name, value in trainer.projectors.state_dict().items():
        torch.testing.assert_close(projectors[name], value)

    final = tmp_path / "final"
    trainer.save_model(str(final))
    assert {PROJECTORS_NAME, "model.safetensors", "config.json", "tokenizer.json"} <= set(os.listdir(final))
    reloaded = type(trainer.model).from_pretrained(final)
    torch.testing.assert_close(
        reloaded.get_input_embeddings().weight, trainer.model.get_input_embeddings().weight
    )


def test_resume_restores_projectors_and_their_optimizer_state(tmp_path):
    common = dict(max_steps=4, save_strategy="steps", save_steps=2)
    straight = make_trainer(tmp_path / "straight", **common)
    straight.train()

    resumed = make_trainer(tmp_path / "resumed", **common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "straight" / "out" / "checkpoint-2"))

    def loss_at(trainer, step):
        return next(e["loss"] for e in trainer.state.log_history if e.get("step") == step and "loss" in e)

    assert loss_at(resumed, 4) == pytest.approx(loss_at(straight, 4), abs=1e-6)
    for name, value in straight.projectors.state_dict().items():
        torch.testing.assert_close(resumed.projectors.state_dict()[name], value, atol=1e-6, rtol=0)


def test_resume_without_projectors_is_refused(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    trainer.train()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    os.remove(checkpoint / PROJECTORS_NAME)
    again = make_trainer(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    with pytest.raises(FileNotFoundError, match="projectors"):
        again.train(resume_from_checkpoint=str(checkpoint))


def test_push_to_hub_uploads_student_tokenizer_card_and_never_the_teacher(tmp_path, monkeypatch):
    uploads = record_hub_uploads(monkeypatch)
    trainer = make_trainer(tmp_path, max_steps=1, hub_model_id="someone/tiny-student")
    trainer.hub_model_id = "someone/tiny-student"
    trainer.train()
    trainer.push_to_hub()

    (upload,) = uploads
    card = upload["card"]
    assert upload["repo_id"] == "someone/tiny-student"
    assert set(upload["names"]) == UPLOADED_FILES
    for tag in ("trl", "dwa-kd", "distillation"):
        assert tag in card
    assert "2602.21669" in card
    assert "Teacher" in card


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(kd_method="nope"), "kd_method"),
        (dict(ce_weight=0.0, kd_weight=0.0, dtw_weight=0.0), "every term is off"),
        (dict(kd_method="uld", ce_weight=0.0, kd_weight=0.0), "both 0"),
        (dict(use_liger_kernel=True), "use_liger_kernel"),
        (dict(kd_divergence="kl"), "kd_divergence"),
        (dict(dtw_gamma=0.0), "dtw_gamma"),
        (dict(dtw_gamma_end=0.1), "dtw_gamma_anneal_steps"),
        (dict(dtw_band_alpha=1.5), "dtw_band_alpha"),
        (dict(max_prompt_length=64, max_length=64), "max_prompt_length"),
        (dict(student_weight_normalization="sum"), "student_weight_normalization"),
        (dict(kd_warmup_steps=-1), "kd_warmup_steps"),
        (dict(kd_method="dskd", kd_warmup_steps=5), "kd_warmup_steps"),
    ],
)
def test_config_errors_name_the_field(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_config(tmp_path, **overrides)


def test_gamma_annealing_is_linear(tmp_path):
    config = make_config(tmp_path, dtw_gamma=2.0, dtw_gamma_end=0.5, dtw_gamma_anneal_steps=3)
    assert [config.dtw_gamma_at(step) for step in (0, 1, 3, 10)] == pytest.approx([2.0, 1.5, 0.5, 0.5])


def test_kd_warmup_ramps_the_student_space_term_linearly(tmp_path):
    config = make_config(tmp_path, kd_warmup_steps=4)
    assert [config.loss_options(step).kd_student_scale for step in (0, 1, 4, 9)] == pytest.approx([0, 0.25, 1, 1])
    assert make_config(tmp_path).loss_options(0).kd_student_scale == 1.0


def test_kd_warmup_leaves_the_other_terms_and_logs_the_scale(tmp_path):
    trainer = make_trainer(tmp_path, kd_warmup_steps=2, max_steps=3, logging_steps=1)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["kd_student_scale"] for entry in logs] == pytest.approx([0.0, 0.5, 1.0])
    first = logs[0]  # step 0: only the student-space KD is off
    expected = 0.5 * first["ce"] + 0.5 * (first["kd_teacher"] + first["ce_t2s"])
    expected += 0.2 * (first["dtw_hidden"] + first["dtw_embed"])
    assert first["loss"] == pytest.approx(expected, rel=1e-3)


def assert_refused(tmp_path, match, args=None, rows=ROWS, **trainer_fields):
    """Building the trainer raises a ValueError matching `match` (defaults: `make_config`, the shared rows)."""
    with pytest.raises(ValueError, match=match):
        DWAKDTrainer(args=args or make_config(tmp_path), train_dataset=Dataset.from_list(rows), **trainer_fields)


class TestErrorsBeforeExpensiveWork:
    def test_no_teacher(self, tmp_path, student_tokenizer):
        student = tiny_causal_lm(student_tokenizer)
        assert_refused(tmp_path, "teacher_model_name_or_path", model=student, processing_class=student_tokenizer)

    def test_teacher_init_kwargs_with_a_built_teacher(self, tmp_path, student_tokenizer):
        assert_refused(
            tmp_path,
            "teacher_model_init_kwargs",
            args=make_config(tmp_path, teacher_model_init_kwargs='{"dtype": "float32"}'),
            model=tiny_causal_lm(student_tokenizer),
            teacher_model=tiny_causal_lm(student_tokenizer),
            processing_class=student_tokenizer,
        )

    def test_teacher_tokenizer_not_found(self, tmp_path, student_tokenizer, teacher_tokenizer):
        teacher = tiny_causal_lm(teacher_tokenizer)
        teacher.config._name_or_path = str(tmp_path / "no-such-teacher")
        assert_refused(
            tmp_path,
            "teacher_processing_class",
            model=tiny_causal_lm(student_tokenizer),
            teacher_model=teacher,
            processing_class=student_tokenizer,
        )

    def test_bad_dataset_columns_before_any_model_loads(self, tmp_path):
        assert_refused(
            tmp_path,
            "question",
            rows=[{"question": "q", "answer": "a"}],
            model=str(tmp_path / "not-loaded"),
            teacher_model=str(tmp_path / "not-loaded-either"),
        )

    def test_peft_model_with_peft_config(self, tmp_path, student_tokenizer, teacher_tokenizer):
        from peft import get_peft_model

        lora = LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM")
        assert_refused(
            tmp_path,
            "PeftModel",
            model=get_peft_model(tiny_causal_lm(student_tokenizer), lora),
            teacher_model=tiny_causal_lm(teacher_tokenizer),
            processing_class=student_tokenizer,
            peft_config=lora,
        )

    def test_missing_pad_token_falls_back_to_eos_with_a_warning(self, tmp_path):
        from transformers import AutoTokenizer

        from testing_utils import TOKENIZERS

        student_tokenizer = AutoTokenizer.from_pretrained(TOKENIZERS / "gpt2")
        assert student_tokenizer.pad_token is None
        teacher_tokenizer = shared_tokenizers()[1]
        with pytest.warns(UserWarning, match="no pad token"):
            trainer = DWAKDTrainer(
                model=tiny_causal_lm(shared_tokenizers()[0]),
                teacher_model=tiny_causal_lm(teacher_tokenizer),
                args=make_config(tmp_path),
                train_dataset=Dataset.from_list(ROWS),
                processing_class=student_tokenizer,
                teacher_processing_class=teacher_tokenizer,
            )
        assert trainer.processing_class.pad_token == "<|endoftext|>"


def test_same_tokenizer_with_padded_vocabulary(tmp_path):
    tokenizer = shared_tokenizers()[0]
    student = tiny_causal_lm(tokenizer, hidden_size=16, vocab_size=len(tokenizer) + 47, seed=3)
    teacher = tiny_causal_lm(tokenizer, hidden_size=24, seed=4)
    trainer = DWAKDTrainer(
        model=student,
        teacher_model=teacher,
        args=make_config(tmp_path, max_steps=2),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tokenizer,
        teacher_processing_class=tokenizer,
    )
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))


def test_evaluation_logs_prefixed_components(tmp_path):
    student_tokenizer, teacher_tokenizer = shared_tokenizers()
    trainer = DWAKDTrainer(
        model=tiny_causal_lm(student_tokenizer, hidden_size=16, seed=1),
        teacher_model=tiny_causal_lm(teacher_tokenizer, hidden_size=24, seed=2),
        args=make_config(tmp_path, per_device_eval_batch_size=2),
        train_dataset=Dataset.from_list(ROWS),
        eval_dataset=Dataset.from_list(ROWS[:4]),
        processing_class=student_tokenizer,
        teacher_processing_class=teacher_tokenizer,
    )
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] > 0
    for key in COMPONENTS:
        assert f"eval_{key}" in metrics, key
    assert not any(key in metrics for key in COMPONENTS)
