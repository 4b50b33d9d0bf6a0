"""Reading and checking a training recipe before any model is loaded.

`RecipeParser` refuses unknown recipe keys and values of the wrong type, naming key and file;
`check_train_arguments` refuses anything else that can be found wrong without loading a model (missing models or
data, paths that do not exist, splits that are not there), naming the field and the fix.
"""

import argparse
import difflib
import os
import sys

import yaml
from huggingface_hub.utils import HFValidationError, validate_repo_id
from trl import TrlParser

DATA_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


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
        for entry in value if isinstance(value, list) else [value]:
            if entry is not None:
                _check_hub_id_or_path(name, entry)

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
        return [None if item is None else _converted(item, action) for item in items]  # null: an entry left unset
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
