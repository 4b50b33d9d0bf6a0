"""`hf-dwakd cache-teacher`: build the teacher cache of a training recipe.

    hf-dwakd cache-teacher --config RECIPE.yaml --teacher_cache_dir DIR [--teacher_cache_dtype bfloat16]
    accelerate launch -m hf_dwakd.cli cache-teacher --config RECIPE.yaml ...   (each process runs a share)

It reads the same recipe and flags as `train`, prepares the same training and eval data, and writes the cache to
`teacher_cache_dir`; `train` with the same recipe and `teacher_cache_dir` then reads it.
"""

import sys

DESCRIPTION = (
    "Run the teacher once over a recipe's training and eval data and store its last hidden states at the response "
    "positions in `teacher_cache_dir`, for `hf-dwakd train` with the same recipe and `teacher_cache_dir`. Takes the "
    "options of `hf-dwakd train`."
)


def main(argv):
    from ..loading import load_tokenizer
    from ..scripts.recipe import RecipeParser, check_train_arguments
    from ..scripts.train import TRAIN_DATACLASSES, load_train_datasets
    from .build import build_teacher_cache

    try:
        parser = RecipeParser(TRAIN_DATACLASSES, prog="hf-dwakd cache-teacher", description=DESCRIPTION)
        script_args, training_args, model_args = parser.parse_args_and_config(argv)
        check_train_arguments(script_args, training_args, model_args)
        if not training_args.needs_teacher:
            raise ValueError(f"kd_method={training_args.kd_method!r} uses no teacher: there is nothing to cache.")
        if training_args.teacher_cache_dir is None:
            raise ValueError("`teacher_cache_dir` (the folder to write the cache to) is required.")
        train_dataset, eval_dataset, _ = load_train_datasets(script_args, training_args)
    except (ValueError, FileNotFoundError) as error:
        print(f"hf-dwakd cache-teacher: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    teacher_kwargs = dict(attn_implementation=model_args.attn_implementation, dtype=model_args.dtype)
    training_args.teacher_model_init_kwargs = {**teacher_kwargs, **(training_args.teacher_model_init_kwargs or {})}
    student_tokenizer = load_tokenizer(
        model_args.model_name_or_path,
        role="student",
        fix="check `model_name_or_path`",
        trust_remote_code=training_args.trust_remote_code,
    )
    path = build_teacher_cache(training_args, train_dataset, eval_dataset, student_tokenizer=student_tokenizer)
    print(f"Teacher cache ready in {path}.")
