"""The CPU demo's recipe and entry point: argument checks, and a whole run on tiny stand-in models."""

from pathlib import Path

import pytest
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import get_peft_config

from hf_dwakd.demo import run

from testing_utils import save_tiny_model

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "demo_cpu.yaml"


def test_recipe_parses_into_a_cpu_lora_run():
    demo, args, model_args = run.parse_demo_arguments(["--config", str(RECIPE)])

    assert (demo.student, demo.teacher) == ("gemma-3-270m", "smollm2-135m-instruct")
    assert (demo.train_examples, demo.heldout_examples, demo.heldout_max_new_tokens) == (200, 16, 64)
    assert args.kd_method == "dwakd" and not args.bf16 and not args.activation_checkpointing
    assert (args.max_length, args.max_prompt_length, args.num_train_epochs) == (256, 192, 1)
    peft_config = get_peft_config(model_args)
    assert isinstance(peft_config, LoraConfig)
    assert (peft_config.r, peft_config.lora_alpha, peft_config.target_modules) == (8, 16, "all-linear")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--student", "gemma-3-27b"], "`student`: 'gemma-3-27b' is not a demo model"),
        (["--model_name_or_path", "gpt2"], "name the student with `student`"),
        (["--train_examples", "201"], "`train_examples` must be between 1 and 200"),
        (["--heldout_examples", "0"], "`heldout_examples` must be between 1 and 32"),
    ],
)
def test_bad_arguments_are_refused_before_any_model_loads(flags, message, monkeypatch):
    def no_model(name):
        raise AssertionError("a model was prepared before the arguments were checked")

    monkeypatch.setattr(run, "demo_model_path", no_model)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        run.main(["--config", str(RECIPE), *flags])


@pytest.mark.slow
def test_demo_trains_scores_and_saves_with_tiny_models(tmp_path, monkeypatch):
    folders = {}
    for name, tokenizer_name in (("gemma-3-270m", "gpt2"), ("smollm2-135m-instruct", "llama2")):
        folders[name] = save_tiny_model(tmp_path / name, tokenizer_name)
    monkeypatch.setattr(run, "demo_model_path", folders.__getitem__)
    output_dir = tmp_path / "student"
    flags = ["--train_examples", "4", "--per_device_train_batch_size", "2", "--max_steps", "2"]
    flags += ["--learning_rate", "0.05"]  # large, so that two steps surely change the greedy responses
    flags += ["--heldout_examples", "3", "--heldout_max_new_tokens", "4", "--heldout_batch_size", "2"]

    scored = []  # the responses each ROUGE-L call receives
    monkeypatch.setattr(run, "rouge_l", lambda responses, references: scored.append(responses) or (0.0, []))

    run.main(["--config", str(RECIPE), "--output_dir", str(output_dir), *flags])

    assert {"adapter_model.safetensors", "projectors.safetensors"} <= {p.name for p in output_dir.iterdir()}
    # What was scored before is the untouched student, and what was scored after is the saved one, reloaded here.
    demo, args, _ = run.parse_demo_arguments(["--config", str(RECIPE), *flags])
    heldout = run.examples_from_jsonl(run.HELDOUT_FILE)[:3]
    tokenizer = AutoTokenizer.from_pretrained(folders["gemma-3-270m"])
    base = AutoModelForCausalLM.from_pretrained(folders["gemma-3-270m"])
    run.greedy_rouge_l(base, tokenizer, heldout, demo, args.max_prompt_length)
    run.greedy_rouge_l(PeftModel.from_pretrained(base, output_dir), tokenizer, heldout, demo, args.max_prompt_length)
    before, after, base_again, trained_again = scored
    assert len(before) == 3 and all(before) and after != before
    assert (base_again, trained_again) == (before, after)
