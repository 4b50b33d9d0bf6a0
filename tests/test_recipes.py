"""The paper's five recipes and the accelerate configs parse with the real parsers and hold the paper's settings.

No model is loaded. The recipes ask for bf16, which TrainingArguments refuses on a machine without a GPU, so they
are parsed with `--bf16 false --use_cpu true` on top (flags override the recipe) and bf16 is checked in the YAML.
"""

from pathlib import Path

import pytest
import yaml
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env
from peft import LoraConfig
from trl import get_peft_config

from hf_dwakd.scripts.train import parse_train_arguments

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
ACCELERATE = RECIPES / "accelerate"

# recipe -> (teacher, student, LoRA, learning rate, epochs), the paper's Table 4.
PAPER_PAIRS = {
    "qwen1.5-1.8b_to_gpt2": ("Qwen/Qwen1.5-1.8B", "gpt2", False, 5e-4, 20),
    "qwen1.5-1.8b_to_gpt2-medium": ("Qwen/Qwen1.5-1.8B", "gpt2-medium", False, 5e-4, 20),
    "qwen2.5-7b_to_gpt2-xl": ("Qwen/Qwen2.5-7B", "gpt2-xl", True, 1e-3, 15),
    "qwen2.5-7b-instruct_to_opt-2.7b": ("Qwen/Qwen2.5-7B-Instruct", "facebook/opt-2.7b", True, 1e-3, 15),
    "mistral-7b_to_tinyllama-1.1b": (
        "mistralai/Mistral-7B-v0.1",
        "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T",
        True,
        1e-3,
        15,
    ),
}


@pytest.mark.parametrize("name", sorted(PAPER_PAIRS))
def test_recipe_parses_and_holds_the_papers_settings(name):
    teacher, student, lora, learning_rate, epochs = PAPER_PAIRS[name]
    path = RECIPES / f"{name}.yaml"
    assert yaml.safe_load(path.read_text())["bf16"] is True

    script_args, training_args, model_args = parse_train_arguments(
        ["--config", str(path), "--bf16", "false", "--use_cpu", "true"]
    )

    assert model_args.model_name_or_path == student
    assert training_args.teacher_model_name_or_path == teacher
    assert script_args.dataset_name == "databricks/databricks-dolly-15k"
    assert training_args.kd_method == "dwakd"
    assert training_args.learning_rate == learning_rate
    assert training_args.num_train_epochs == epochs
    assert training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps == 8
    assert training_args.lr_scheduler_type.value == "cosine"
    assert training_args.projector_learning_rate == 1e-3
    assert training_args.kd_temperature == 2.0
    assert (training_args.ce_weight, training_args.kd_weight, training_args.dtw_weight) == (0.5, 0.5, 0.2)
    assert (training_args.max_length, training_args.max_prompt_length) == (512, 256)
    peft_config = get_peft_config(model_args)
    if lora:
        assert isinstance(peft_config, LoraConfig)
        assert (peft_config.r, peft_config.lora_alpha, peft_config.lora_dropout) == (256, 8, 0.1)
    else:
        assert peft_config is None


def test_every_paper_pair_has_a_recipe():
    pair_recipes = {path.stem for path in RECIPES.glob("*.yaml")} - {"demo_cpu"}
    assert pair_recipes == set(PAPER_PAIRS)


def launch_environment(config_file):
    """The environment `accelerate launch --config_file config_file` gives each training process."""
    args = launch_command_parser().parse_args(["--config_file", str(config_file), "train.py"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        return prepare_deepspeed_cmd_env(args)[1]
    return prepare_multi_gpu_env(args)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("multi_gpu", {"ACCELERATE_MIXED_PRECISION": "bf16"}),
        ("deepspeed_zero2", {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}),
        (
            "deepspeed_zero3",
            {
                "ACCELERATE_USE_DEEPSPEED": "true",
                "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
                # Both models are loaded partitioned, the teacher included.
                "ACCELERATE_DEEPSPEED_ZERO3_INIT": "true",
                "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "none",
            },
        ),
        (
            "fsdp2",
            {
                "ACCELERATE_USE_FSDP": "true",
                "FSDP_VERSION": "2",
                "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
                "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT",
                # True would leave the teacher on the meta device on every rank but the first.
                "FSDP_CPU_RAM_EFFICIENT_LOADING": "false",
            },
        ),
    ],
)
def test_accelerate_config_gives_the_intended_launch_environment(name, expected):
    environment = launch_environment(ACCELERATE / f"{name}.yaml")
    assert {key: environment.get(key) for key in expected} == expected
    assert environment["ACCELERATE_MIXED_PRECISION"] == "bf16"
