"""Several teachers with different vocabularies in one run (docs/method.md, Several teachers).

The student reads GPT-2's tokenizer, the two teachers Llama-2's (SentencePiece) and SmolLM2's (another byte-level
BPE): three vocabularies, none shared.
"""

import functools
import json
import os

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file

from hf_dwakd import DWAKDTrainer
from hf_dwakd.data import DistillationCollator, prepare_distillation_dataset
from hf_dwakd.projectors import DWAKDProjectors
from hf_dwakd.scripts import train as train_script
from hf_dwakd.teacher_cache import LightTeacher, build_teacher_cache
from hf_dwakd.teacher_list import teacher_names
from hf_dwakd.trainer import PROJECTORS_NAME

from testing_utils import (
    ROWS,
    UPLOADED_FILES,
    load_tokenizer,
    make_config,
    record_hub_uploads,
    tiny_causal_lm,
    write_cpu_recipe,
)

WEIGHTS = [3.0, 1.0]  # normalised to 0.75 / 0.25
NAMES = ["llama-teacher", "smollm-teacher"]


@functools.cache
def tokenizers():
    return load_tokenizer("gpt2"), load_tokenizer("llama2"), load_tokenizer("smollm2")


@functools.cache
def teachers():
    _, llama, smollm = tokenizers()
    first = tiny_causal_lm(llama, hidden_size=24, seed=2)
    second = tiny_causal_lm(smollm, family="gpt2", hidden_size=20, seed=3)
    for model, name in zip((first, second), NAMES):
        model.config._name_or_path = f"tiny/{name}"
    return first, second


def save_models(folder):
    """The student and both teachers saved in `folder` ("student" and the teachers' names), with their tokenizers."""
    student_tokenizer, *teacher_tokenizers = tokenizers()
    tiny_causal_lm(student_tokenizer, hidden_size=16, seed=1).save_pretrained(folder / "student")
    student_tokenizer.save_pretrained(folder / "student")
    for name, model, tokenizer in zip(NAMES, teachers(), teacher_tokenizers):
        model.save_pretrained(folder / name)
        tokenizer.save_pretrained(folder / name)


def build(tmp_path, which=(0, 1), trainer_class=DWAKDTrainer, **overrides):
    """A trainer with the teachers `which` (a list of both, or one index: the single-teacher trainer)."""
    student_tokenizer, *teacher_tokenizers = tokenizers()
    if isinstance(which, int):
        teacher_model, teacher_tokenizer = teachers()[which], teacher_tokenizers[which]
    else:
        teacher_model = [teachers()[index] for index in which]
        teacher_tokenizer = [teacher_tokenizers[index] for index in which]
    return trainer_class(
        model=tiny_causal_lm(student_tokenizer, hidden_size=16, seed=1),
        teacher_model=teacher_model,
        args=make_config(tmp_path, **overrides),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=student_tokenizer,
        teacher_processing_class=teacher_tokenizer,
    )


def first_batch(trainer, rows=4):
    return trainer.data_collator([trainer.train_dataset[index] for index in range(rows)])


def as_single_teacher_batch(batch, prefix):
    """The batch a single-teacher trainer of the teacher with columns `prefix` reads."""
    columns = ("input_ids", "attention_mask", "labels")
    return {name: batch[name] for name in columns} | {f"teacher_{name}": batch[f"{prefix}{name}"] for name in columns}


def loss_and_gradients(trainer, batch, num_items_in_batch):
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, read when logging
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch, num_items_in_batch=num_items_in_batch)
    loss.backward()
    gradients = {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), gradients


def test_one_teacher_in_a_list_is_the_single_teacher_bit_for_bit(tmp_path):
    single = build(tmp_path / "single", which=0)
    listed = build(tmp_path / "listed", which=[0], teacher_weights=[2.0])
    assert isinstance(listed.projectors, DWAKDProjectors) and len(listed.teachers) == 1
    assert listed.train_dataset.column_names == single.train_dataset.column_names
    assert listed.train_dataset.to_dict() == single.train_dataset.to_dict()
    listed.projectors.load_state_dict(single.projectors.state_dict())
    batch = first_batch(single)
    loss, gradients = loss_and_gradients(single, batch, num_items_in_batch=50)
    listed_loss, listed_gradients = loss_and_gradients(listed, batch, num_items_in_batch=50)
    assert torch.equal(loss, listed_loss)
    assert gradients.keys() == listed_gradients.keys()
    for name, gradient in gradients.items():
        assert torch.equal(gradient, listed_gradients[name]), name


@pytest.mark.parametrize("method", ["dwakd", "dskd"])
def test_loss_is_the_weighted_sum_of_single_teacher_losses(tmp_path, method):
    both = build(tmp_path / "both", kd_method=method, teacher_weights=WEIGHTS)
    singles = [build(tmp_path / f"single{index}", which=index, kd_method=method) for index in (0, 1)]
    assert [teacher.name for teacher in both.teachers] == NAMES
    assert [teacher.weight for teacher in both.teachers] == [0.75, 0.25]
    # Each teacher's tokenization is the one a single-teacher run prepares (no row here is truncated).
    for prefix, single in zip(("teacher_", "teacher_2_"), singles):
        for column in ("input_ids", "labels"):
            assert both.train_dataset[f"{prefix}{column}"] == single.train_dataset[f"teacher_{column}"]
    for name, single in zip(NAMES, singles):
        single.projectors.load_state_dict(both.projectors[name].state_dict())

    batch = first_batch(both)
    # A denominator larger than this batch's count, as under gradient accumulation: every teacher divides by it.
    num_items = 2 * int((batch["labels"][:, 1:] != -100).sum())
    loss, gradients = loss_and_gradients(both, batch, num_items)
    parts = [
        loss_and_gradients(single, as_single_teacher_batch(batch, prefix), num_items)
        for single, prefix in zip(singles, ("teacher_", "teacher_2_"))
    ]
    torch.testing.assert_close(loss, 0.75 * parts[0][0] + 0.25 * parts[1][0], rtol=1e-6, atol=0)
    student_names = [name for name in gradients if "dwakd_projectors" not in name]
    for name in student_names:
        expected = 0.75 * parts[0][1][name] + 0.25 * parts[1][1][name]
        torch.testing.assert_close(gradients[name], expected, rtol=1e-5, atol=1e-8)
    for index, (teacher_name, weight) in enumerate(zip(NAMES, (0.75, 0.25))):
        for name, gradient in parts[index][1].items():
            if name.startswith("dwakd_projectors."):
                own = name.replace("dwakd_projectors.", f"dwakd_projectors.{teacher_name}.", 1)
                torch.testing.assert_close(gradients[own], weight * gradient, rtol=1e-5, atol=1e-8)

    logged = both._metrics["train"]
    assert len(logged["ce"]) == 1  # the student's own term, once
    for name in NAMES:
        for metric in ("kd_student", "kd_teacher", "ce_t2s", "t2s_acc", "s2t_acc"):
            assert f"{name}/{metric}" in logged
    assert "kd_student" not in logged


def test_each_teacher_starts_from_its_single_teacher_aligned_fit(tmp_path):
    """`projector_init: aligned` fits each teacher's projectors on its own columns of the batch: what a
    single-teacher run of that teacher fits (the rows are tokenized alike, none truncated)."""
    both = build(tmp_path / "both", projector_init="aligned", teacher_weights=WEIGHTS)
    fits = both.start_projectors()
    assert list(fits) == NAMES
    for index, name in enumerate(NAMES):
        single = build(tmp_path / f"single{index}", which=index, projector_init="aligned")
        (single_fit,) = single.start_projectors().values()
        assert fits[name] == single_fit
        for key, value in single.projectors.state_dict().items():
            torch.testing.assert_close(both.projectors[name].state_dict()[key], value, rtol=1e-6, atol=1e-8)


def test_checkpoints_resume_push_and_card_with_two_teachers(tmp_path, monkeypatch):
    common = dict(max_steps=1, save_strategy="steps", save_steps=1, teacher_weights=WEIGHTS)
    trained = build(tmp_path / "trained", hub_model_id="someone/tiny-student", **common)
    trained.train()
    checkpoint = tmp_path / "trained" / "out" / "checkpoint-1"
    files = {name: load_file(checkpoint / f"projectors-{name}.safetensors") for name in NAMES}
    for name in NAMES:
        for key, value in trained.projectors[name].state_dict().items():
            torch.testing.assert_close(files[name][key], value, rtol=0, atol=0)
    assert not (checkpoint / "projectors.safetensors").exists()

    resumed = build(tmp_path / "resumed", **common)
    with torch.no_grad():
        for parameter in resumed.projectors.parameters():
            parameter.zero_()
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for name in NAMES:
        for key, value in resumed.projectors[name].state_dict().items():
            torch.testing.assert_close(value, files[name][key], rtol=0, atol=0)

    os.remove(checkpoint / f"projectors-{NAMES[1]}.safetensors")
    again = build(tmp_path / "again", **common)
    with pytest.raises(FileNotFoundError, match=f"projectors-{NAMES[1]}.safetensors is missing"):
        again.train(resume_from_checkpoint=str(checkpoint))

    uploads = record_hub_uploads(monkeypatch)
    trained.hub_model_id = "someone/tiny-student"
    trained.push_to_hub()
    (upload,) = uploads
    card = upload["card"]
    projectors = {f"projectors-{name}.safetensors" for name in NAMES}  # one file per teacher
    assert set(upload["names"]) == UPLOADED_FILES - {PROJECTORS_NAME} | projectors
    student_weights = load_file(tmp_path / "trained" / "out" / "model.safetensors")
    assert student_weights.keys() == trained.model.state_dict().keys() - {
        key for key in trained.model.state_dict() if key.startswith("dwakd_projectors.")
    }
    assert "`tiny/llama-teacher` (weight 0.75)" in card and "`tiny/smollm-teacher` (weight 0.25)" in card


def test_a_run_mixes_a_cached_and_a_live_teacher(tmp_path):
    cache_dir = str(tmp_path / "cache")
    student_tokenizer, *teacher_tokenizers = tokenizers()
    args = make_config(tmp_path, teacher_cache_dir=["none", cache_dir], teacher_weights=WEIGHTS)
    paths = build_teacher_cache(
        args,
        Dataset.from_list(ROWS),
        student_tokenizer=student_tokenizer,
        teacher_tokenizer=teacher_tokenizers,
        teacher_model=list(teachers()),
    )
    assert paths == [None, tmp_path / "cache"]
    mixed = build(tmp_path / "mixed", teacher_cache_dir=[None, cache_dir], teacher_weights=WEIGHTS)
    live = build(tmp_path / "live", teacher_weights=WEIGHTS)
    assert mixed.teachers[0].cached is None and isinstance(mixed.teachers[1].cached, LightTeacher)
    assert "teacher_2_hidden" in mixed.train_dataset.column_names
    mixed.projectors.load_state_dict(live.projectors.state_dict())
    batch = first_batch(mixed)
    num_items = int((batch["labels"][:, 1:] != -100).sum())
    mixed_loss, _ = loss_and_gradients(mixed, batch, num_items)
    live_loss, _ = loss_and_gradients(live, {k: v for k, v in batch.items() if not k.endswith("hidden")}, num_items)
    torch.testing.assert_close(mixed_loss, live_loss, rtol=1e-6, atol=0)


def test_collator_pads_each_side_to_its_own_width():
    student_tokenizer, *teacher_tokenizers = tokenizers()
    prepared = prepare_distillation_dataset(Dataset.from_list(ROWS), student_tokenizer, teacher_tokenizers, 64, 32)
    rows = [prepared[index] for index in range(len(prepared))]
    pad_ids = [tokenizer.pad_token_id for tokenizer in teacher_tokenizers]
    batch = DistillationCollator(student_tokenizer.pad_token_id, pad_ids)(rows)
    for prefix, pad_id in (("", student_tokenizer.pad_token_id), ("teacher_", pad_ids[0]), ("teacher_2_", pad_ids[1])):
        lengths = [len(row[f"{prefix}input_ids"]) for row in rows]
        assert batch[f"{prefix}input_ids"].shape == (len(rows), max(lengths))
        for index, length in enumerate(lengths):
            assert batch[f"{prefix}input_ids"][index, :length].tolist() == rows[index][f"{prefix}input_ids"]
            assert (batch[f"{prefix}input_ids"][index, length:] == pad_id).all()
            assert (batch[f"{prefix}labels"][index, length:] == -100).all()
    widths = {batch[f"{prefix}input_ids"].shape[1] for prefix in ("", "teacher_", "teacher_2_")}
    assert len(widths) > 1  # each side has its own width


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(teacher_tokenizer_name_or_path=["a/tok"]), "`teacher_tokenizer_name_or_path` has 1 entries"),
        (dict(teacher_cache_dir=["c1", "c2", "c3"]), "`teacher_cache_dir` has 3 entries"),
        (dict(teacher_weights=[1.0, -0.5]), "`teacher_weights` must be finite numbers >= 0"),
        (dict(teacher_weights=[0.0, 0.0]), "`teacher_weights` must be finite numbers >= 0, not all 0"),
        (dict(teacher_weights=[1.0]), "`teacher_weights` has 1 entries"),
        (dict(kd_method="mined"), "kd_method='mined' distils from one teacher only"),
        (dict(alignment_plot_steps=5), "`alignment_plot_steps` draws one teacher's alignment"),
    ],
)
def test_bad_teacher_lists_are_refused_by_the_config(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_config(tmp_path, teacher_model_name_or_path=["owner/teacher-a", "owner/teacher-b"], **overrides)


def test_bad_teacher_lists_are_refused_before_any_model_loads(tmp_path, monkeypatch):
    import hf_dwakd.trainer as trainer_module

    def no_loading(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded")

    monkeypatch.setattr(trainer_module, "load_tokenizer", no_loading)
    monkeypatch.setattr(trainer_module, "load_teacher", no_loading)
    with pytest.raises(ValueError, match="`teacher_weights` has 3 entries but `teacher_model` names 2"):
        DWAKDTrainer(
            model="owner/student",
            teacher_model=["owner/teacher-a", "owner/teacher-b"],
            args=make_config(tmp_path, teacher_weights=[1.0, 1.0, 1.0]),
            train_dataset=Dataset.from_list(ROWS),
        )
    with pytest.raises(ValueError, match="kd_method='mined' distils from one teacher only"):
        DWAKDTrainer(
            model="owner/student",
            teacher_model=["owner/teacher-a", "owner/teacher-b"],
            args=make_config(tmp_path, kd_method="mined"),
            train_dataset=Dataset.from_list(ROWS),
        )
    _, llama, smollm = tokenizers()
    for teacher_model, tokenizers_given in (
        (["owner/teacher-a", "owner/teacher-b"], [llama]),
        ("owner/teacher-a", [llama, smollm]),
    ):
        with pytest.raises(ValueError, match=f"`teacher_processing_class` has {len(tokenizers_given)} tokenizers"):
            DWAKDTrainer(
                model="owner/student",
                teacher_model=teacher_model,
                args=make_config(tmp_path),
                train_dataset=Dataset.from_list(ROWS),
                teacher_processing_class=tokenizers_given,
            )


def test_the_command_line_and_recipes_take_the_list_form(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    common = ["--model_name_or_path", "owner/student", "--dataset_files", f"train={data}", "--output_dir", "out"]
    common += ["--use_cpu", "true", "--bf16", "false", "--report_to", "none"]
    argv = [*common, "--teacher_model_name_or_path", "owner/a", "owner/b", "--teacher_weights", "2", "1"]
    argv += ["--teacher_cache_dir", "cache/a", "none"]
    _, args, _ = train_script.parse_train_arguments(argv)
    assert args.teacher_model_name_or_path == ["owner/a", "owner/b"]
    assert args.teacher_weights == [2.0, 1.0]
    assert args.teacher_cache_dir == ["cache/a", None]
    _, args, _ = train_script.parse_train_arguments([*common, "--teacher_model_name_or_path", "owner/a"])
    assert args.teacher_model_name_or_path == "owner/a"  # one teacher: exactly the single-teacher config

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model_name_or_path: owner/student\ndataset_files: [train={data}]\noutput_dir: out\nuse_cpu: true\n"
        "bf16: false\nreport_to: none\nteacher_model_name_or_path: [owner/a, owner/b]\n"
        "teacher_cache_dir: [null, cache/b]\nteacher_weights: [1, 3]\n"
        "teacher_tokenizer_name_or_path: [null, owner/tok]\n"
    )
    _, args, _ = train_script.parse_train_arguments(["--config", str(recipe)])
    assert args.teacher_model_name_or_path == ["owner/a", "owner/b"]
    assert args.teacher_tokenizer_name_or_path == [None, "owner/tok"]  # null: the teacher's own
    assert args.teacher_cache_dir == [None, "cache/b"]
    assert args.teacher_weights == [1.0, 3.0]
    with pytest.raises(ValueError, match="`teacher_weights` must be finite numbers >= 0"):
        train_script.parse_train_arguments([*argv[:-3], "--teacher_weights", "1", "-1"])


def test_teacher_names_are_short_unique_and_safe():
    assert teacher_names(["Qwen/Qwen2.5-Coder-1.5B-Instruct", "/models/gemma-3-270m/"]) == [
        "Qwen2_5-Coder-1_5B-Instruct",
        "gemma-3-270m",
    ]
    assert teacher_names(["a/same", "b/same", ""]) == ["same-1", "same-2", "teacher3"]


def test_inspect_draws_one_row_per_teacher(tmp_path, capsys):
    from matplotlib.image import imread
    from safetensors.torch import save_file

    from hf_dwakd.cli import main as cli_main

    save_models(tmp_path)
    for name, model in zip(NAMES, teachers()):
        torch.manual_seed(len(name))
        projectors = DWAKDProjectors(16, model.config.hidden_size).state_dict()
        path = tmp_path / "student" / f"projectors-{name}.safetensors"
        save_file({k: v.contiguous() for k, v in projectors.items()}, path)
    example = ["--text", ROWS[3]["prompt"], "--response", ROWS[3]["completion"]]
    both = ["--student", str(tmp_path / "student")]
    both += [flag for name in NAMES for flag in ("--teacher", str(tmp_path / name))]
    cli_main(["inspect", *both, *example, "--output", str(tmp_path / "both.png")])
    numbers = json.loads((tmp_path / "both.json").read_text(encoding="utf-8"))
    assert list(numbers) == NAMES
    one_row_height = None
    for name in NAMES:
        single = tmp_path / f"{name}.png"
        projectors = tmp_path / "student" / f"projectors-{name}.safetensors"
        arguments = ["--student", str(tmp_path / "student"), "--teacher", str(tmp_path / name)]
        cli_main(["inspect", *arguments, "--projectors", str(projectors), *example, "--output", str(single)])
        alone = json.loads(single.with_suffix(".json").read_text(encoding="utf-8"))
        assert numbers[name]["teacher_tokens"] == alone["teacher_tokens"]
        torch.testing.assert_close(torch.tensor(numbers[name]["attention"]), torch.tensor(alone["attention"]))
        one_row_height = imread(single).shape[0]
    assert imread(tmp_path / "both.png").shape[0] > 1.5 * one_row_height  # two rows of panels
    assert numbers[NAMES[0]]["teacher_tokens"] != numbers[NAMES[1]]["teacher_tokens"]  # two vocabularies

    with pytest.raises(SystemExit):
        cli_main(["inspect", *both, *example, "--projectors", "one.safetensors", "--output", str(tmp_path / "x.png")])
    assert "--projectors is given 1 times for 2 --teacher" in capsys.readouterr().err


def test_cache_teacher_command_builds_the_listed_teachers_caches_and_train_reads_them(tmp_path):
    from hf_dwakd import cli

    save_models(tmp_path)
    argv = write_cpu_recipe(
        tmp_path,
        model_name_or_path=str(tmp_path / "student"),
        teacher_model_name_or_path=[str(tmp_path / name) for name in NAMES],
        teacher_cache_dir=[str(tmp_path / "cache"), None],  # the second teacher runs live
    )
    cli.main(["cache-teacher", *argv])
    metadata = json.loads((tmp_path / "cache" / "metadata.json").read_text())
    assert metadata["splits"]["train"]["rows"] == len(ROWS)
    assert not (tmp_path / NAMES[1] / "metadata.json").exists()

    script_args, training_args, model_args = train_script.parse_train_arguments(argv)
    run = train_script.build_trainer(
        training_args, model_args, train_script.load_train_datasets(script_args, training_args)
    )
    assert isinstance(run.teachers[0].cached, LightTeacher) and run.teachers[1].model is not None
    assert [teacher.name for teacher in run.teachers] == NAMES
