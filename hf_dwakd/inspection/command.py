"""`hf-dwakd inspect`: the alignment picture of one example, as PNG and JSON.

    hf-dwakd inspect --student DIR --teacher DIR (--text PROMPT --response TEXT | --data FILE.jsonl --index N)
        --output PATH.png [--projectors FILE] [--student_tokenizer DIR] [--teacher_tokenizer DIR]

The student may be a full model or a PEFT adapter folder (with adapter_config.json); the projectors default to
the `projectors.safetensors` that the trainer saves beside the student. A student distilled from several teachers:
give `--teacher` once per teacher, in the training order (and `--projectors`, `--teacher_tokenizer` once per
teacher when given); the picture has one row per teacher, and each teacher's projectors default to its
`projectors-<name>.safetensors`. `--fit_projectors` instead fits them as `projector_init="aligned"` does before
training (docs/method.md, Projector start), on the first `--fit_rows` rows of a training file: the picture of the
aligned start (one teacher). The objective's knobs (band, gamma) are
the defaults of `DWAKDLossOptions`. Every input is checked before a model is loaded.
"""

import argparse
import sys
from pathlib import Path

from ..optional import require_matplotlib


def build_parser():
    parser = argparse.ArgumentParser(prog="hf-dwakd inspect", description=__doc__.splitlines()[0])
    parser.add_argument("--student", required=True, help="student folder: a full model or a PEFT adapter")
    parser.add_argument(
        "--teacher", required=True, action="append", help="teacher folder or Hub id; once per teacher for several"
    )
    parser.add_argument(
        "--projectors",
        action="append",
        help="projectors file, once per teacher (default: the one the trainer saved beside --student)",
    )
    parser.add_argument(
        "--fit_projectors",
        help="a .jsonl training file: fit the projectors on it (projector_init='aligned') instead of loading them",
    )
    parser.add_argument("--fit_rows", type=int, default=256, help="rows of --fit_projectors fitted on (default 256)")
    parser.add_argument("--student_tokenizer", help="student tokenizer (default: --student)")
    parser.add_argument(
        "--teacher_tokenizer", action="append", help="teacher tokenizer, once per teacher (default: --teacher)"
    )
    parser.add_argument("--text", help="the prompt of the example (with --response)")
    parser.add_argument("--response", help="the response of the example (with --text)")
    parser.add_argument("--data", help="a .jsonl file in any format the trainer reads (with --index)")
    parser.add_argument("--index", type=int, help="the row of --data to draw, from 0")
    parser.add_argument("--output", required=True, help="PATH.png; the numbers go to PATH.json")
    parser.add_argument("--max_length", type=int, default=512, help="prompt + response tokens (default 512)")
    parser.add_argument("--max_prompt_length", type=int, default=256, help="prompt tokens kept (default 256)")
    return parser


def main(argv=None):
    try:
        args = build_parser().parse_args(argv)
        row, projectors_paths = check_arguments(args)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"hf-dwakd inspect: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    png_path, json_path = inspect(args, row, projectors_paths)
    print(f"alignment written to {png_path} and {json_path}")


def check_arguments(args):
    """`(row, projectors_paths)` (one per teacher), or an error naming the flag, before anything expensive."""
    require_matplotlib()
    if not args.output.endswith(".png"):
        raise ValueError(f"--output must end in .png (the JSON goes beside it), got {args.output}")
    by_text = args.text is not None or args.response is not None
    by_data = args.data is not None or args.index is not None
    if by_text == by_data:
        raise ValueError("give the example either as --text PROMPT --response TEXT or as --data FILE --index N")
    if by_text:
        if args.text is None or args.response is None:
            raise ValueError("--text and --response go together: give both")
        row = {"prompt": args.text, "completion": args.response}
    else:
        row = _data_row(args.data, args.index)
    from ..projectors import PROJECTORS_NAME, projectors_file_name
    from ..teacher_list import teacher_names

    for flag in ("projectors", "teacher_tokenizer"):
        given = getattr(args, flag)
        if given is not None and len(given) != len(args.teacher):
            count = len(args.teacher)
            raise ValueError(f"--{flag} is given {len(given)} times for {count} --teacher: give it once per teacher")
    if args.fit_projectors is not None:
        return row, [None] * _check_fit_arguments(args)
    if args.projectors:
        paths = [Path(path) for path in args.projectors]
    elif len(args.teacher) == 1:
        paths = [Path(args.student) / PROJECTORS_NAME]
    else:
        paths = [Path(args.student) / projectors_file_name(name) for name in teacher_names(args.teacher)]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(
                f"no projectors at {path}: pass --projectors FILE (DWAKDTrainer saves {PROJECTORS_NAME}, or "
                "projectors-<teacher name>.safetensors with several teachers, beside the student)"
            )
    if not Path(args.student).is_dir():
        raise FileNotFoundError(f"--student {args.student} is not a folder")
    return row, paths


def _check_fit_arguments(args):
    """The number of teachers to fit projectors for, after checking the --fit_projectors flags."""
    if args.projectors is not None:
        raise ValueError("give either --projectors (load them) or --fit_projectors (fit them), not both")
    if len(args.teacher) != 1:
        raise ValueError("--fit_projectors draws one teacher: give --teacher once")
    if not Path(args.fit_projectors).is_file():
        raise FileNotFoundError(f"--fit_projectors {args.fit_projectors} does not exist")
    if args.fit_rows < 1:
        raise ValueError(f"--fit_rows must be at least 1, got {args.fit_rows}")
    if not Path(args.student).is_dir():
        raise FileNotFoundError(f"--student {args.student} is not a folder")
    return 1


def inspect(args, row, projectors_paths):
    """Load the student, each teacher and its projectors, draw the example; returns the PNG and JSON paths."""
    from ..loading import load_model, load_tokenizer
    from ..teacher_list import teacher_names, teacher_prefix
    from .example import example_batch
    from .figure import save_alignment, save_teachers_alignment

    student_tokenizer = load_tokenizer(
        args.student_tokenizer or args.student, role="student", fix="pass --student_tokenizer"
    )
    tokenizer_names = args.teacher_tokenizer or args.teacher
    teacher_tokenizers = [
        load_tokenizer(name, role="teacher", fix="pass --teacher_tokenizer") for name in tokenizer_names
    ]
    several = len(args.teacher) > 1
    batch = example_batch(
        row,
        student_tokenizer,
        teacher_tokenizers if several else teacher_tokenizers[0],
        args.max_length,
        args.max_prompt_length,
    )
    student_model = load_model(args.student)
    numbers = {
        name: _teacher_numbers(
            student_model, student_tokenizer, teacher, tokenizer, path, batch, teacher_prefix(k), args
        )
        for k, (name, teacher, tokenizer, path) in enumerate(
            zip(teacher_names(args.teacher), args.teacher, teacher_tokenizers, projectors_paths)
        )
    }
    if several:
        return save_teachers_alignment(numbers, args.output)
    return save_alignment(next(iter(numbers.values())), args.output)


def _teacher_numbers(
    student_model, student_tokenizer, teacher, teacher_tokenizer, projectors_path, batch, prefix, args
):
    """One teacher's `AlignmentNumbers` on the collated example `batch` (its columns start with `prefix`); its
    projectors are read from `projectors_path`, or fitted on `--fit_projectors` when that is None."""
    import torch
    from safetensors.torch import load_file

    from ..loading import load_model
    from ..model_side import ModelSide
    from ..objective import DWAKDLossOptions
    from ..projectors import DWAKDProjectors
    from .example import example_sides, response_tokens
    from .numbers import alignment_numbers

    teacher_model = load_model(teacher)
    sides = (
        ModelSide("student", len(student_tokenizer), model=student_model, unpadded_forward=False),
        ModelSide("teacher", len(teacher_tokenizer), prefix=prefix, model=teacher_model, unpadded_forward=False),
    )
    sizes = [model.config.get_text_config().hidden_size for model in (student_model, teacher_model)]
    if projectors_path is None:
        projectors = DWAKDProjectors(*sizes)
        fit_on_rows(projectors, sides, student_tokenizer, teacher_tokenizer, args)
    else:
        state = load_file(str(projectors_path))
        projectors = DWAKDProjectors(*sizes, embedding_projector="embed_t2s.weight" in state)
        try:
            projectors.load_state_dict(state)
        except RuntimeError as error:
            raise ValueError(f"--projectors {projectors_path} do not fit this student and teacher: {error}") from None
    student, teacher_side = example_sides(*sides, batch)
    projectors.to(student.hidden.device)
    with torch.no_grad():
        return alignment_numbers(
            student,
            teacher_side,
            projectors,
            DWAKDLossOptions(),
            response_tokens(student, student_tokenizer),
            response_tokens(teacher_side, teacher_tokenizer),
        )


def fit_on_rows(projectors, sides, student_tokenizer, teacher_tokenizer, args, batch_size=4):
    """Fit `projectors` as `projector_init="aligned"` does, on the first `--fit_rows` rows of `--fit_projectors`,
    with the default ridge of `DWAKDConfig`; `sides` are the student's and the teacher's `ModelSide`s."""
    from datasets import Dataset

    from ..config import DWAKDConfig
    from ..data import DistillationCollator, prepare_distillation_dataset
    from ..evaluation.benchmarks import read_jsonl
    from ..projector_init import TokenBytes, fit_aligned_projectors
    from .example import example_sides

    rows = read_jsonl(args.fit_projectors)[: args.fit_rows]
    prepared = prepare_distillation_dataset(
        Dataset.from_list(rows), student_tokenizer, teacher_tokenizer, args.max_length, args.max_prompt_length
    )
    collate = DistillationCollator(student_tokenizer.pad_token_id, teacher_tokenizer.pad_token_id)
    batches = (
        example_sides(*sides, collate([prepared[i] for i in range(start, min(start + batch_size, len(prepared)))]))
        for start in range(0, len(prepared), batch_size)
    )
    projectors.to(next(sides[0].model.parameters()).device)
    ridge = DWAKDConfig.__dataclass_fields__["projector_init_ridge"].default
    bytes_ = [TokenBytes.from_tokenizer(tokenizer) for tokenizer in (student_tokenizer, teacher_tokenizer)]
    return fit_aligned_projectors(projectors, batches, *bytes_, ridge=ridge)


def _data_row(path, index):
    from ..evaluation.benchmarks import read_jsonl

    if index is None or path is None:
        raise ValueError("--data and --index go together: give both")
    if not Path(path).is_file():
        raise FileNotFoundError(f"--data {path} does not exist")
    rows = read_jsonl(path)
    if not 0 <= index < len(rows):
        raise ValueError(f"--index {index} is outside {path}, which has {len(rows)} rows (0 to {len(rows) - 1})")
    return rows[index]
