"""`hf-dwakd`, the command line: `train` distils a student from a teacher, `evaluate` scores a model.

    hf-dwakd train --config recipes/qwen1.5-1.8b_to_gpt2.yaml [--any_field VALUE ...]
    accelerate launch --config_file recipes/accelerate/deepspeed_zero3.yaml -m hf_dwakd.cli train --config ...
    hf-dwakd evaluate --model DIR --data_dir DIR --output_dir DIR

`train` reads a YAML recipe and flags (flags win) with TRL's `TrlParser` into `TrainScriptArguments`,
`DWAKDConfig` and TRL's `ModelConfig`, as TRL's own `sft` script does. Unknown recipe keys, values of the wrong
type, missing models or datasets and paths that do not exist are refused before any model is loaded.
"""

import argparse
import difflib
import os
import sys
from dataclasses import dataclass, field

import yaml
from huggingface_hub.utils import HFValidationError, validate_repo_id
from trl import ModelConfig, ScriptArguments, TrlParser

from .config import DWAKDConfig

COMMANDS = {
    "train": "distil a student from a teacher (a YAML recipe and/or flags; see `hf-dwakd train --help`)",
    "evaluate": "ROUGE-L of a model on Dolly, Self-Instruct, Vicuna and S-NI (see `hf-dwakd evaluate --help`)",
    "inspect": "draw how a student's tokens meet the teacher's on one example (see `hf-dwakd inspect --help`)",
    "cache-teacher": "run the teacher once and store its states for `train` (see `hf-dwakd cache-teacher --help`)",
}
# databricks/databricks-dolly-15k's columns; its rows get the paper's prompt template (docs/method.md, Evaluation
# protocol).
DOLLY_HUB_COLUMNS = {"instruction", "context", "response"}
DATA_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


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


class RecipeParser(TrlParser):
    """`TrlParser` that refuses recipe keys it does not know and values of the wrong type, naming key and file."""

    config_path = None

    def parse_args_and_config(self, args=None):
        args = list(sys.argv[1:] if args is None else args)
        self.config_path = _recipe_path(args)
        return super().parse_args_and_config(args)

    def set_defaults_with_config(self, **config):
        actions = {action.dest: action for action in reversed(self._actions) if action.dest != "help"}
        # Fields that TrainingArguments accepts as a mapping (or its JSON text on the command line).
        dict_fields = {name for dtype in self.dataclass_types for name in getattr(dtype, "_VALID_DICT_FIELDS", [])}
        problems = []
        for key, value in config.items():
            if key not in actions:
                close = difflib.get_close_matches(key, actions, n=1)
                hint = f" (did you mean `{close[0]}`?)" if close else ""
                problems.append(f"unknown key `{key}`{hint}")
                continue
            try:
                config[key] = _checked_value(value, actions[key], key in dict_fields)
            except ValueError as error:
                problems.append(f"`{key}`: {error}")
        if problems:
            hint = f" Recipe keys are the options of `{self.prog} --help`." if "unknown key" in str(problems) else ""
            raise ValueError(f"Recipe {self.config_path}: {'; '.join(problems)}.{hint}")
        return super().set_defaults_with_config(**config)


TRAIN_DESCRIPTION = (
    "Distil a student from a teacher with DWA-KD. Options may come from a YAML recipe given with --config RECIPE.yaml "
    "(its keys are the option names below, plus `env:` for environment variables); flags override the recipe."
)


def build_train_parser():
    return RecipeParser(TRAIN_DATACLASSES, prog="hf-dwakd train", description=TRAIN_DESCRIPTION)


def parse_train_arguments(argv):
    """`(script_args, training_args, model_args)` from flags and `--config`, checked as far as possible."""
    script_args, training_args, model_args = build_train_parser().parse_args_and_config(argv)
    check_train_arguments(script_args, training_args, model_args)
    return script_args, training_args, model_args


def check_train_arguments(script_args, training_args, model_args):
    """Raise, naming the field and the fix, on anything that can be found wrong without loading a model."""
    if not model_args.model_name_or_path:
        raise ValueError("`model_name_or_path` (the student) is required: set it in the recipe or pass the flag.")
    if training_args.needs_teacher and not training_args.teacher_model_name_or_path:
        raise ValueError(
            f"kd_method={training_args.kd_method!r} needs `teacher_model_name_or_path`: set it in the recipe or "
            "pass the flag (or use kd_method=sft to train without a teacher)."
        )
    if not (script_args.dataset_name or script_args.dataset_files):
        raise ValueError(
            "No training data: set `dataset_name` (a Hub id or local folder) or `dataset_files` (SPLIT=PATH)."
        )
    if script_args.dataset_streaming:
        raise ValueError("`dataset_streaming` is not supported: every row is tokenized by both models up front.")
    named = [("model_name_or_path", model_args.model_name_or_path)]
    if training_args.needs_teacher:
        named.append(("teacher_model_name_or_path", training_args.teacher_model_name_or_path))
        named.append(("teacher_tokenizer_name_or_path", training_args.teacher_tokenizer_name_or_path))
    if not script_args.dataset_files:
        named.append(("dataset_name", script_args.dataset_name))
    for name, value in named:
        if value is not None:
            _check_hub_id_or_path(name, value)

    if script_args.dataset_files:
        files = dataset_files_by_split(script_args.dataset_files)
        if script_args.dataset_train_split not in files:
            raise ValueError(
                f"`dataset_files` has no {script_args.dataset_train_split!r} split (the `dataset_train_split`): "
                f"got splits {sorted(files)}; write the training file as {script_args.dataset_train_split}=PATH."
            )
        evaluating = training_args.eval_strategy != "no" and script_args.rouge_selection_data_dir is None
        if evaluating and script_args.dataset_test_split not in files:
            raise ValueError(
                f"`eval_strategy` is {training_args.eval_strategy.value!r} but `dataset_files` has no "
                f"{script_args.dataset_test_split!r} split (the `dataset_test_split`): add "
                f"{script_args.dataset_test_split}=PATH, or set eval_strategy to 'no'."
            )
    if script_args.rouge_selection_data_dir is not None:
        dev_file = os.path.join(script_args.rouge_selection_data_dir, "dolly", "dev.jsonl")
        _existing_path("rouge_selection_data_dir", dev_file)
        if training_args.eval_strategy == "no":
            raise ValueError(
                "`rouge_selection_data_dir` scores each evaluation, but `eval_strategy` is 'no': set eval_strategy to "
                "'epoch' or 'steps'."
            )
    if script_args.rouge_selection_max_examples is not None and script_args.rouge_selection_max_examples < 1:
        raise ValueError(
            f"`rouge_selection_max_examples` must be at least 1 (or unset for all), got "
            f"{script_args.rouge_selection_max_examples}."
        )
    if isinstance(training_args.resume_from_checkpoint, str):
        _existing_path("resume_from_checkpoint", training_args.resume_from_checkpoint)


def dataset_files_by_split(entries):
    """`["train=a.jsonl", "b.jsonl"]`-style entries -> `{split: path}`, each path checked to exist."""
    files = {}
    for entry in entries:
        split, separator, path = entry.partition("=")
        if not separator:
            split, path = "train", entry
        if not split or not path or split in files:
            raise ValueError(
                f"`dataset_files`: {entry!r} must be SPLIT=PATH with each split named once (got {entries})."
            )
        if os.path.splitext(path)[1] not in DATA_FILE_BUILDERS:
            raise ValueError(f"`dataset_files`: {path} must end in one of {', '.join(DATA_FILE_BUILDERS)}.")
        files[split] = _existing_path("dataset_files", path)
    if len({DATA_FILE_BUILDERS[os.path.splitext(path)[1]] for path in files.values()}) > 1:
        raise ValueError(f"`dataset_files` mixes file formats ({entries}); use one format for every split.")
    return files


def load_train_datasets(script_args, training_args):
    """`(train_dataset, eval_dataset, selection_examples)`: eval data only when `eval_strategy` is not 'no'."""
    from datasets import Dataset, load_dataset

    from .evaluation import dolly_selection_examples

    if script_args.dataset_files:
        files = dataset_files_by_split(script_args.dataset_files)
        builder = DATA_FILE_BUILDERS[os.path.splitext(next(iter(files.values())))[1]]
        dataset, source = load_dataset(builder, data_files=files), "`dataset_files`"
    else:
        dataset = load_dataset(script_args.dataset_name, name=script_args.dataset_config)
        source = f"dataset {script_args.dataset_name!r}"
    train_split = _split(dataset, script_args.dataset_train_split, "dataset_train_split", source)
    train_dataset = _with_dolly_prompts(train_split)

    selection_examples = None
    eval_dataset = None
    if script_args.rouge_selection_data_dir is not None:
        selection_examples = dolly_selection_examples(script_args.rouge_selection_data_dir)
        selection_examples = selection_examples[: script_args.rouge_selection_max_examples]
        rows = [{"prompt": example.prompt, "output": example.references[0]} for example in selection_examples]
        eval_dataset = Dataset.from_list(rows)
    elif training_args.eval_strategy != "no":
        eval_split = _split(dataset, script_args.dataset_test_split, "dataset_test_split", source)
        eval_dataset = _with_dolly_prompts(eval_split)
    return train_dataset, eval_dataset, selection_examples


def build_trainer(training_args, model_args, datasets):
    """The `DWAKDTrainer` (it loads both models) on `load_train_datasets`' output; ROUGE-L callback if selecting."""
    from trl import get_peft_config, get_quantization_config

    from .evaluation import RougeEvalCallback
    from .trainer import DWAKDTrainer

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


def train(argv):
    """The `train` command: parse and check, train, save the student (and projectors) to `output_dir`."""
    try:
        script_args, training_args, model_args = parse_train_arguments(argv)
        datasets = load_train_datasets(script_args, training_args)
    except (ValueError, FileNotFoundError) as error:
        print(f"hf-dwakd train: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
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


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="hf-dwakd",
        description="Cross-tokenizer knowledge distillation with DWA-KD (arXiv 2602.21669).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {name:13} {text}" for name, text in COMMANDS.items()),
    )
    parser.add_argument("command", choices=list(COMMANDS), help=", ".join(COMMANDS))
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parsed = parser.parse_args(argv)
    if parsed.command == "evaluate":
        from .evaluation.command import main as evaluate

        evaluate(parsed.arguments)
    elif parsed.command == "inspect":
        from .inspection.command import main as inspect

        inspect(parsed.arguments)
    elif parsed.command == "cache-teacher":
        from .teacher_cache.command import main as cache_teacher

        cache_teacher(parsed.arguments)
    else:
        train(parsed.arguments)


# ---- helpers -----------------------------------------------------------------------------------------------------


def _recipe_path(args):
    """The `--config` file, checked to exist and to hold a YAML mapping (TrlParser reads it again)."""
    if "--config" not in args:
        return None
    index = args.index("--config")
    if index + 1 == len(args):
        raise ValueError("`--config` needs the path of a YAML recipe.")
    path = args[index + 1]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Recipe file {path} does not exist (given with --config).")
    with open(path, encoding="utf-8") as handle:
        try:
            recipe = yaml.safe_load(handle)
        except yaml.YAMLError as error:
            raise ValueError(f"Recipe {path} is not valid YAML: {error}") from None
    if not isinstance(recipe, dict):
        raise ValueError(f"Recipe {path} must be a YAML mapping of field: value.")
    return path


def _checked_value(value, action, accepts_dict):
    """`value` converted as the flag would convert its text; `ValueError` when it cannot be."""
    if value is None or (isinstance(value, dict) and accepts_dict):
        return value
    if isinstance(value, dict):
        raise ValueError(f"expects a single value, got the mapping {value!r}")
    if action.nargs in ("+", "*"):
        items = value if isinstance(value, list) else [value]
        return [_converted(item, action) for item in items]
    if isinstance(value, list):
        raise ValueError(f"expects a single value, got the list {value!r}")
    return _converted(value, action)


def _converted(value, action):
    if action.type is None:
        return value
    try:
        converted = action.type(value if isinstance(value, str) else str(value))
    except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
        raise ValueError(f"{value!r} is not a valid value for this field ({error})") from None
    if action.choices is not None and converted not in action.choices:
        choices = ", ".join(str(getattr(choice, "value", choice)) for choice in action.choices)
        raise ValueError(f"{value!r} is not one of {choices}")
    return converted


def _check_hub_id_or_path(name, value):
    """A local path must exist; anything else must at least be a valid Hub repository id."""
    if os.path.exists(os.path.expanduser(value)):
        return
    try:
        validate_repo_id(value)
    except HFValidationError:
        raise FileNotFoundError(
            f"`{name}`: {value} does not exist (and is not a Hub id such as owner/name): fix the path."
        ) from None


def _existing_path(name, path):
    if not os.path.exists(os.path.expanduser(path)):
        raise FileNotFoundError(f"`{name}`: {path} does not exist.")
    return os.path.expanduser(path)


def _split(dataset, split, field_name, source):
    if split not in dataset:
        raise ValueError(
            f"{source} has no split {split!r} (it has {', '.join(dataset)}): set `{field_name}` to one of them."
        )
    return dataset[split]


def _with_dolly_prompts(dataset):
    """databricks-dolly-15k rows (instruction, context, response) as prompt/completion in the paper's template."""
    from .evaluation import alpaca_prompt

    if not DOLLY_HUB_COLUMNS <= set(dataset.column_names) or "prompt" in dataset.column_names:
        return dataset
    return dataset.map(
        lambda row: {"prompt": alpaca_prompt(row["instruction"], row["context"]), "completion": row["response"]},
        remove_columns=dataset.column_names,
    )


if __name__ == "__main__":
    main()
