"""`hf-dwakd train`: distil a student from a teacher, from a YAML recipe and/or flags.

    hf-dwakd train --config recipes/qwen1.5-1.8b_to_gpt2.yaml [--any_field VALUE ...]
    accelerate launch --config_file recipes/accelerate/deepspeed_zero3.yaml -m hf_dwakd.cli train --config ...
    python -m hf_dwakd.scripts.train --config ...

The recipe and flags (flags win) fill `TrainScriptArguments`, `DWAKDConfig` and TRL's `ModelConfig` through TRL's
`TrlParser`, as TRL's own `sft` script does, and are checked before any model is loaded (`recipe.py`). From
Python: `main(*make_parser().parse_args_and_config(argv))`.
"""

import os
import sys
from dataclasses import dataclass, field

from trl import ModelConfig, ScriptArguments

from ..config import DWAKDConfig
from ..data.dolly import with_dolly_prompts
from .recipe import DATA_FILE_BUILDERS, RecipeParser, check_train_arguments, dataset_files_by_split


@dataclass
class TrainScriptArguments(ScriptArguments):
    """TRL's `ScriptArguments` plus local data files and ROUGE-L checkpoint selection."""

    dataset_files: list[str] | None = field(
        default=None,
        metadata={
            "help": "Local data files as SPLIT=PATH (a bare PATH is the train split), e.g. "
            "train=data/dolly/train.jsonl: .jsonl/.json, .csv or .parquet. Used instead of `dataset_name`."
        },
    )
    rouge_selection_data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder holding dolly/dev.jsonl (DSKD format). Every evaluation then runs on the first half of "
            "that file (the model-selection half; the evaluate command scores the second) and adds `eval_rougeL` "
            "(one sampling seed) for `metric_for_best_model`. Needs `eval_strategy` other than 'no'."
        },
    )
    rouge_selection_max_examples: int | None = field(
        default=None, metadata={"help": "Score only the first N selection examples (default: all)."}
    )


TRAIN_DATACLASSES = (TrainScriptArguments, DWAKDConfig, ModelConfig)
DESCRIPTION = (
    "Distil a student from a teacher with DWA-KD. Options may come from a YAML recipe given with --config RECIPE.yaml "
    "(its keys are the option names below, plus `env:` for environment variables); flags override the recipe."
)


def make_parser(prog: str = "hf-dwakd train") -> RecipeParser:
    return RecipeParser(TRAIN_DATACLASSES, prog=prog, description=DESCRIPTION)


def parse_train_arguments(argv=None):
    """`(script_args, training_args, model_args)` from flags and `--config`, checked as far as possible."""
    script_args, training_args, model_args = make_parser().parse_args_and_config(argv)
    check_train_arguments(script_args, training_args, model_args)
    return script_args, training_args, model_args


def load_train_datasets(script_args, training_args):
    """`(train_dataset, eval_dataset, selection_examples)`: eval data only when `eval_strategy` is not 'no'."""
    from datasets import Dataset, load_dataset

    from ..evaluation import dolly_selection_examples

    if script_args.dataset_files:
        files = dataset_files_by_split(script_args.dataset_files)
        builder = DATA_FILE_BUILDERS[os.path.splitext(next(iter(files.values())))[1]]
        dataset, source = load_dataset(builder, data_files=files), "`dataset_files`"
    else:
        dataset = load_dataset(script_args.dataset_name, name=script_args.dataset_config)
        source = f"dataset {script_args.dataset_name!r}"
    train_dataset = with_dolly_prompts(_split(dataset, script_args.dataset_train_split, "dataset_train_split", source))

    selection_examples = None
    eval_dataset = None
    if script_args.rouge_selection_data_dir is not None:
        selection_examples = dolly_selection_examples(script_args.rouge_selection_data_dir)
        selection_examples = selection_examples[: script_args.rouge_selection_max_examples]
        rows = [{"prompt": example.prompt, "output": example.references[0]} for example in selection_examples]
        eval_dataset = Dataset.from_list(rows)
    elif training_args.eval_strategy != "no":
        eval_split = _split(dataset, script_args.dataset_test_split, "dataset_test_split", source)
        eval_dataset = with_dolly_prompts(eval_split)
    return train_dataset, eval_dataset, selection_examples


def build_trainer(training_args, model_args, datasets):
    """The `DWAKDTrainer` (it loads both models) on `load_train_datasets`' output; ROUGE-L callback if selecting."""
    from trl import get_peft_config, get_quantization_config

    from ..evaluation import RougeEvalCallback
    from ..trainer import DWAKDTrainer

    train_dataset, eval_dataset, selection_examples = datasets
    student_kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None:
        student_kwargs["quantization_config"] = quantization_config
    training_args.model_init_kwargs = {**student_kwargs, **(training_args.model_init_kwargs or {})}
    teacher_kwargs = dict(attn_implementation=model_args.attn_implementation, dtype=model_args.dtype)
    training_args.teacher_model_init_kwargs = {**teacher_kwargs, **(training_args.teacher_model_init_kwargs or {})}

    trainer = DWAKDTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=get_peft_config(model_args),
    )
    if selection_examples is not None:
        trainer.add_callback(
            RougeEvalCallback(
                selection_examples,
                trainer.processing_class,
                max_examples=None,
                batch_size=training_args.per_device_eval_batch_size,
                max_length=training_args.max_length,
                max_prompt_length=training_args.max_prompt_length,
            )
        )
    return trainer


def main(script_args, training_args, model_args, datasets=None):
    """Load the data (unless `datasets` holds `load_train_datasets`' output), train, save the student (and
    projectors) to `output_dir`."""
    if datasets is None:
        datasets = load_train_datasets(script_args, training_args)
    trainer = build_trainer(training_args, model_args, datasets)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Student saved to {training_args.output_dir}.")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    # A rank that tears the process group down while the main process is still saving can leave the main process
    # hanging at exit (seen with gloo: 3 runs in 6 under load, none in 9 with this barrier).
    trainer.accelerator.wait_for_everyone()
    trainer.end()


def run(argv=None):
    """The `train` command: a bad recipe, flag or data file ends it with exit status 2 before any model loads."""
    try:
        script_args, training_args, model_args = parse_train_arguments(argv)
        datasets = load_train_datasets(script_args, training_args)
    except (ValueError, FileNotFoundError) as error:
        print(f"hf-dwakd train: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    main(script_args, training_args, model_args, datasets)


def _split(dataset, split, field_name, source):
    if split not in dataset:
        raise ValueError(
            f"{source} has no split {split!r} (it has {', '.join(dataset)}): set `{field_name}` to one of them."
        )
    return dataset[split]


if __name__ == "__main__":
    run()
