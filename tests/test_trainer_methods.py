"""Every `kd_method` trains in the same trainer and leaves a checkpoint that reloads."""

import os

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from hf_dwakd import DWAKDTrainer
from hf_dwakd.trainer import PROJECTORS_NAME

from testing_utils import (
    BASELINE_OPTIONS,
    ROWS,
    make_config,
    make_trainer,
    method_options,
    shared_tokenizers,
    tiny_causal_lm,
)

METHODS = sorted(["sft", *BASELINE_OPTIONS])


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_and_its_checkpoint_reloads(tmp_path, method, mined_cache):
    options = method_options(method, mined_cache)
    if method == "sft":
        tokenizer = shared_tokenizers()[0]
        trainer = DWAKDTrainer(
            model=tiny_causal_lm(tokenizer, hidden_size=16, seed=1),
            args=make_config(tmp_path, kd_method="sft", max_steps=2, save_strategy="steps", save_steps=2),
            train_dataset=Dataset.from_list(ROWS),
            processing_class=tokenizer,
        )
        assert trainer.teacher_model is None and trainer.projectors is None
    else:
        trainer = make_trainer(
            tmp_path, kd_method=method, max_steps=2, save_strategy="steps", save_steps=2, **options
        )
    trainer.train()

    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 2
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in logged)
    assert all("ce" in entry for entry in logged)
    if method != "sft":
        assert all("kd" in entry and entry["kd"] >= 0 for entry in logged)

    checkpoint = tmp_path / "out" / "checkpoint-2"
    reloaded = AutoModelForCausalLM.from_pretrained(checkpoint)
    for name, value in reloaded.state_dict().items():
        torch.testing.assert_close(value, trainer.model.state_dict()[name])
    if method == "dskd":
        projectors = load_file(checkpoint / PROJECTORS_NAME)
        layers = ("query", "t2s", "s2t")
        assert set(projectors) == {f"{layer}.{kind}" for layer in layers for kind in ("weight", "bias")}
    else:
        assert not os.path.exists(checkpoint / PROJECTORS_NAME)


def test_sft_loss_is_the_student_cross_entropy(tmp_path):
    tokenizer = shared_tokenizers()[0]
    model = tiny_causal_lm(tokenizer, hidden_size=16, seed=1)
    trainer = DWAKDTrainer(
        model=model,
        args=make_config(tmp_path, kd_method="sft"),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tokenizer,
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch))
        inputs = {name: batch[name] for name in ("input_ids", "attention_mask", "labels")}
        expected = model(**inputs).loss
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize(
    "overrides, owner",
    [
        (dict(kd_method="uld", dtw_weight=0.3), "dwakd"),
        (dict(kd_method="dskd", uld_top_k=10), "uld"),
        (dict(kd_method="dwakd", ot_top_k=10), "multilevel_ot"),
        (dict(kd_method="sft", kd_weight=0.3), "dwakd / dskd"),
        (dict(kd_method="uld", projector_learning_rate=1e-2), "dwakd / dskd"),
    ],
)
def test_options_of_another_method_are_refused(tmp_path, overrides, owner):
    name = next(key for key in overrides if key != "kd_method")
    with pytest.raises(ValueError, match=f"`{name}` belongs to kd_method {owner}"):
        make_config(tmp_path, **overrides)


def test_sft_ignores_a_teacher_with_a_warning(tmp_path):
    tokenizer = shared_tokenizers()[0]
    with pytest.warns(UserWarning, match="uses no teacher"):
        trainer = DWAKDTrainer(
            model=tiny_causal_lm(tokenizer, hidden_size=16, seed=1),
            args=make_config(tmp_path, kd_method="sft", teacher_model_name_or_path=str(tmp_path / "never-loaded")),
            train_dataset=Dataset.from_list(ROWS),
            processing_class=tokenizer,
        )
    assert trainer.teacher_model is None


def test_dwakd_without_the_embedding_pair_builds_no_embedding_projector(tmp_path):
    trainer = make_trainer(tmp_path, use_dtw_embed=False, max_steps=1)
    assert trainer.projectors.embed_t2s is None
    trainer.train()
