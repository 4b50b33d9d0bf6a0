"""`hf-dwakd`: help, recipe + flag parsing, refusals before any model loads, local data, one real training run."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from trl import ModelConfig, SFTConfig

from hf_dwakd import cli
from hf_dwakd.config import DWAKDConfig
from hf_dwakd.evaluation import alpaca_prompt
from hf_dwakd.scripts import train as train_script

from testing_utils import save_tiny_model, write_jsonl

DSKD_ROWS = [
    {"instruction": f"Question {i}?", "prompt": alpaca_prompt(f"Question {i}?"), "input": "", "output": f"Answer {i}."}
    for i in range(6)
]


def write_recipe(path, **fields):
    path.write_text(yaml.safe_dump(fields), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Folders of a tiny GPT-2 student and a tiny Llama teacher, each with its real tokenizer."""
    root = tmp_path_factory.mktemp("models")
    for role, tokenizer_name, family, hidden_size in (
        ("student", "gpt2", "gpt2", 16),
        ("teacher", "llama2", "llama", 24),
    ):
        save_tiny_model(root / role, tokenizer_name, family, hidden_size, seed=3)
    return root


@pytest.fixture
def base(models, tmp_path):
    """Recipe fields for a valid CPU run on local data."""
    train_file = write_jsonl(tmp_path / "data" / "train.jsonl", DSKD_ROWS)
    return dict(
        model_name_or_path=str(models / "student"),
        teacher_model_name_or_path=str(models / "teacher"),
        dataset_files=[f"train={train_file}"],
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        bf16=False,
        report_to="none",
    )


def help_text(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_train_help_lists_every_field_with_its_help_text(capsys):
    text = help_text(capsys, ["train", "--help"])
    for dataclass_type in (train_script.TrainScriptArguments, DWAKDConfig, ModelConfig):
        for field in dataclasses.fields(dataclass_type):
            if field.init:
                assert f"--{field.name} " in text, field.name
    inherited = {field.name for field in dataclasses.fields(SFTConfig)}
    own_fields = [field for field in dataclasses.fields(DWAKDConfig) if field.name not in inherited]
    own_fields += dataclasses.fields(train_script.TrainScriptArguments)[-3:]
    assert len(own_fields) > 30
    for field in own_fields:
        # argparse wraps lines at spaces and after hyphens, so compare without whitespace.
        assert "".join(field.metadata["help"].split()) in "".join(text.split()), field.name
    assert "--config" in text


def test_top_level_help_and_evaluate_dispatch(capsys):
    top = help_text(capsys, ["--help"])
    assert "train" in top and "evaluate" in top
    evaluate = help_text(capsys, ["evaluate", "--help"])
    assert "--benchmarks" in evaluate and "--seeds" in evaluate


def test_a_command_is_one_entry_of_the_table(monkeypatch):
    received = []
    monkeypatch.setitem(sys.modules, "hello_command", type(sys)("hello_command"))
    sys.modules["hello_command"].run = received.append
    monkeypatch.setitem(cli.COMMANDS, "hello", ("hello_command:run", "say hello"))
    cli.main(["hello", "--name", "x"])
    assert received == [["--name", "x"]]


def test_train_and_evaluate_name_the_model_alike(capsys):
    for command in ("train", "evaluate"):
        assert "--model_name_or_path " in help_text(capsys, [command, "--help"])


def test_module_entry_point_runs():
    repository = str(Path(__file__).resolve().parents[1])
    result = subprocess.run(
        [sys.executable, "-m", "hf_dwakd.cli", "--help"], cwd=repository, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "usage: hf-dwakd" in result.stdout


def test_recipe_and_flags_fill_the_three_dataclasses(base, tmp_path, monkeypatch):
    recipe = write_recipe(
        tmp_path / "recipe.yaml",
        **base,
        env={"DWAKD_TEST_VARIABLE": "set"},
        learning_rate="5e-4",  # YAML 1.1 reads this as a string; the flag's type converts it
        num_train_epochs=20,
        lr_scheduler_type="cosine",
        dtw_gamma=1.5,
        use_dtw_band=False,
        use_peft=True,
        lora_r=256,
        lora_alpha=8,
        lora_dropout=0.1,
        lora_target_modules=["c_attn"],
        teacher_model_init_kwargs={"dtype": "bfloat16"},
    )
    monkeypatch.delenv("DWAKD_TEST_VARIABLE", raising=False)
    argv = ["--config", recipe, "--dtw_gamma", "3.0"]
    script_args, training_args, model_args = train_script.parse_train_arguments(argv)
    assert script_args.dataset_files == base["dataset_files"]
    assert training_args.learning_rate == 5e-4 and training_args.num_train_epochs == 20
    assert training_args.lr_scheduler_type.value == "cosine"
    assert training_args.dtw_gamma == 3.0  # the flag wins over the recipe
    assert training_args.use_dtw_band is False
    assert training_args.teacher_model_init_kwargs == {"dtype": "bfloat16"}
    lora = (model_args.use_peft, model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout)
    assert lora == (True, 256, 8, 0.1)
    assert model_args.lora_target_modules == "c_attn"
    assert os.environ["DWAKD_TEST_VARIABLE"] == "set"


BAD_RECIPES = [
    ({"lerning_rate": 1e-3}, "unknown key `lerning_rate` (did you mean `learning_rate`?)"),
    ({"student_model": "gpt2"}, "unknown key `student_model`"),
    ({"per_device_train_batch_size": 8.5}, "`per_device_train_batch_size`: 8.5 is not a valid value"),
    ({"num_train_epochs": "many"}, "`num_train_epochs`: 'many' is not a valid value"),
    ({"dtype": "float8"}, "`dtype`: 'float8' is not one of auto, bfloat16, float16, float32"),
    ({"lr_scheduler_type": "cosinee"}, "`lr_scheduler_type`: 'cosinee' is not one of linear, cosine"),
    ({"learning_rate": [1e-3, 1e-4]}, "`learning_rate`: expects a single value, got the list"),
    ({"output_dir": {"path": "x"}}, "`output_dir`: expects a single value, got the mapping"),
]


@pytest.mark.parametrize("fields, message", BAD_RECIPES)
def test_bad_recipe_key_or_value_names_key_and_file(base, tmp_path, fields, message):
    recipe = write_recipe(tmp_path / "bad.yaml", **{**base, **fields})
    with pytest.raises(ValueError) as error:
        train_script.parse_train_arguments(["--config", recipe])
    assert message in str(error.value) and recipe in str(error.value)


BAD_FIELDS = [
    ("model_name_or_path", None, "`model_name_or_path` (the student) is required"),
    ("teacher_model_name_or_path", None, "kd_method='dwakd' needs `teacher_model_name_or_path`"),
    ("dataset_files", None, "No training data: set `dataset_name`"),
    ("model_name_or_path", "/no/such/student", "`model_name_or_path`: /no/such/student does not exist"),
    ("teacher_model_name_or_path", "./no-teacher", "`teacher_model_name_or_path`: ./no-teacher does not exist"),
    ("dataset_files", ["train=/no/such/train.jsonl"], "`dataset_files`: /no/such/train.jsonl does not exist"),
    ("resume_from_checkpoint", "/no/checkpoint-5", "`resume_from_checkpoint`: /no/checkpoint-5 does not exist"),
    ("rouge_selection_max_examples", 0, "`rouge_selection_max_examples` must be at least 1"),
    ("dataset_streaming", True, "`dataset_streaming` is not supported"),
]


@pytest.mark.parametrize("field, value, message", BAD_FIELDS)
def test_missing_or_bad_field_or_path_is_named(base, tmp_path, field, value, message):
    fields = {**base, field: value}
    recipe = write_recipe(tmp_path / "recipe.yaml", **{k: v for k, v in fields.items() if v is not None})
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        train_script.parse_train_arguments(["--config", recipe])
    assert message in str(error.value)


def test_sft_needs_no_teacher(base, tmp_path):
    fields = {k: v for k, v in base.items() if k != "teacher_model_name_or_path"}
    recipe = write_recipe(tmp_path / "recipe.yaml", **fields, kd_method="sft")
    _, training_args, _ = train_script.parse_train_arguments(["--config", recipe])
    assert training_args.kd_method == "sft"


@pytest.mark.parametrize(
    "files, message",
    [
        (["validation={train}"], "`dataset_files` has no 'train' split"),
        (["train={train}", "train={train}"], "each split named once"),
        (["train={train}.txt"], "must end in one of .jsonl"),
    ],
)
def test_bad_dataset_files(base, tmp_path, files, message):
    train = base["dataset_files"][0].split("=", 1)[1]
    if files[0].endswith(".txt"):
        (tmp_path / "data" / "train.jsonl.txt").write_text("x")
    recipe = write_recipe(tmp_path / "r.yaml", **{**base, "dataset_files": [f.format(train=train) for f in files]})
    with pytest.raises(ValueError) as error:
        train_script.parse_train_arguments(["--config", recipe])
    assert message in str(error.value)


def test_recipe_file_problems(tmp_path):
    with pytest.raises(FileNotFoundError, match="Recipe file .*missing.yaml does not exist"):
        train_script.parse_train_arguments(["--config", str(tmp_path / "missing.yaml")])
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="must be a YAML mapping"):
        train_script.parse_train_arguments(["--config", str(listing)])
    broken = tmp_path / "broken.yaml"
    broken.write_text("learning_rate: [1\n")
    with pytest.raises(ValueError, match="is not valid YAML"):
        train_script.parse_train_arguments(["--config", str(broken)])


def test_rouge_selection_needs_evaluation_and_the_dev_file(base, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", **base, rouge_selection_data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="dolly/dev.jsonl does not exist"):
        train_script.parse_train_arguments(["--config", recipe])
    write_jsonl(tmp_path / "dolly" / "dev.jsonl", DSKD_ROWS)
    with pytest.raises(ValueError, match="`eval_strategy` is 'no'"):
        train_script.parse_train_arguments(["--config", recipe])


def test_main_refuses_before_loading_any_model(base, tmp_path, monkeypatch, capsys):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was about to be loaded")

    monkeypatch.setattr(train_script, "build_trainer", no_model)
    bad_key = write_recipe(tmp_path / "a.yaml", **base, kd_weigth=0.5)
    bad_split = write_recipe(tmp_path / "b.yaml", **base, eval_strategy="steps", dataset_test_split="test")
    for recipe, message in ((bad_key, "unknown key `kd_weigth`"), (bad_split, "has no 'test' split")):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["train", "--config", recipe])
        assert exit_info.value.code == 2
        error = capsys.readouterr().err
        assert "hf-dwakd train: error:" in error and message in error


def test_databricks_dolly_rows_get_the_paper_template(base, tmp_path):
    rows = [
        {"instruction": "Summarise this.", "context": "A long text.", "response": "Short.", "category": "summary"},
        {"instruction": "Name a fruit.", "context": "", "response": "Apple.", "category": "open_qa"},
    ]
    dolly = write_jsonl(tmp_path / "dolly15k.jsonl", rows)
    recipe = write_recipe(tmp_path / "r.yaml", **{**base, "dataset_files": [str(dolly)]})
    script_args, training_args, _ = train_script.parse_train_arguments(["--config", recipe])
    train, evaluation, selection = train_script.load_train_datasets(script_args, training_args)
    assert train.column_names == ["prompt", "completion"]
    assert train[0] == {"prompt": alpaca_prompt("Summarise this.", "A long text."), "completion": "Short."}
    assert "### Input:" not in train[1]["prompt"] and train[1]["prompt"].endswith("### Response:\n")
    assert evaluation is None and selection is None


def test_rouge_selection_evaluates_on_the_first_half_of_dolly_dev(base, tmp_path):
    write_jsonl(tmp_path / "sel" / "dolly" / "dev.jsonl", DSKD_ROWS)
    recipe = write_recipe(
        tmp_path / "r.yaml", **base, rouge_selection_data_dir=str(tmp_path / "sel"), eval_strategy="epoch"
    )
    script_args, training_args, _ = train_script.parse_train_arguments(["--config", recipe])
    train, evaluation, selection = train_script.load_train_datasets(script_args, training_args)
    assert len(train) == len(DSKD_ROWS)
    assert [example.prompt for example in selection] == [row["prompt"] for row in DSKD_ROWS[:3]]
    assert evaluation.to_list() == [{"prompt": row["prompt"], "output": row["output"]} for row in DSKD_ROWS[:3]]


def test_train_command_trains_lora_student_and_selects_by_rouge(base, tmp_path):
    write_jsonl(tmp_path / "sel" / "dolly" / "dev.jsonl", DSKD_ROWS)
    recipe = write_recipe(
        tmp_path / "recipe.yaml",
        **base,
        use_peft=True,
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.1,
        rouge_selection_data_dir=str(tmp_path / "sel"),
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        max_steps=2,
        per_device_train_batch_size=2,
        per_device_eval_batch_size=4,
        logging_steps=1,
        max_length=48,
        max_prompt_length=32,
        dtw_backend="reference",
        disable_tqdm=True,
    )
    cli.main(["train", "--config", recipe, "--learning_rate", "1e-3"])

    out = tmp_path / "out"
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"], adapter["lora_dropout"]) == (4, 8, 0.1)
    assert adapter["target_modules"] == ["c_attn"]  # PEFT's default for GPT-2
    assert (out / "projectors.safetensors").is_file()
    assert torch.load(out / "training_args.bin", weights_only=False).learning_rate == 1e-3  # the flag won
    history = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    evaluation = [entry for entry in history if "eval_loss" in entry]
    assert len(evaluation) == 1 and 0 <= evaluation[0]["eval_rougeL"] <= 100
