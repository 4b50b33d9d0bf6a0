"""`hf-dwakd inspect`: the alignment picture of one example, as PNG and JSON.

    hf-dwakd inspect --student DIR --teacher DIR (--text PROMPT --response TEXT | --data FILE.jsonl --index N)
        --output PATH.png [--projectors FILE] [--student_tokenizer DIR] [--teacher_tokenizer DIR]

The student may be a full model or a PEFT adapter folder (with adapter_config.json); the projectors default to
the `projectors.safetensors` that the trainer saves beside the student. The objective's knobs (band, gamma) are
the defaults of `DWAKDLossOptions`. Every input is checked before a model is loaded.
"""

import argparse
import sys
from pathlib import Path

from ..optional import require_matplotlib


def build_parser():
    parser = argparse.ArgumentParser(prog="hf-dwakd inspect", description=__doc__.splitlines()[0])
    parser.add_argument("--student", required=True, help="student folder: a full model or a PEFT adapter")
    parser.add_argument("--teacher", required=True, help="teacher folder or Hub id")
    parser.add_argument("--projectors", help="projectors file (default: the one the trainer saved beside --student)")
    parser.add_argument("--student_tokenizer", help="student tokenizer (default: --student)")
    parser.add_argument("--teacher_tokenizer", help="teacher tokenizer (default: --teacher)")
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
        row, projectors_path = check_arguments(args)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"hf-dwakd inspect: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    png_path, json_path = inspect(args, row, projectors_path)
    print(f"alignment written to {png_path} and {json_path}")


def check_arguments(args):
    """`(row, projectors_path)`, or an error naming the flag, before anything expensive."""
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
    from ..trainer import PROJECTORS_NAME

    projectors_path = Path(args.projectors or Path(args.student) / PROJECTORS_NAME)
    if not projectors_path.is_file():
        raise FileNotFoundError(
            f"no projectors at {projectors_path}: pass --projectors FILE (DWAKDTrainer saves {PROJECTORS_NAME} "
            "beside the student)"
        )
    if not Path(args.student).is_dir():
        raise FileNotFoundError(f"--student {args.student} is not a folder")
    return row, projectors_path


def inspect(args, row, projectors_path):
    """Load both models and the projectors, draw the example; returns the PNG and JSON paths."""
    import torch
    from safetensors.torch import load_file

    from ..loading import load_model, load_tokenizer
    from ..model_side import ModelSide
    from ..objective import DWAKDLossOptions
    from ..projectors import DWAKDProjectors
    from .example import example_batch, example_sides, response_tokens
    from .figure import save_alignment
    from .numbers import alignment_numbers

    student_tokenizer = load_tokenizer(
        args.student_tokenizer or args.student, role="student", fix="pass --student_tokenizer"
    )
    teacher_tokenizer = load_tokenizer(
        args.teacher_tokenizer or args.teacher, role="teacher", fix="pass --teacher_tokenizer"
    )
    batch = example_batch(row, student_tokenizer, teacher_tokenizer, args.max_length, args.max_prompt_length)
    student_model, teacher_model = load_model(args.student), load_model(args.teacher)
    state = load_file(str(projectors_path))
    projectors = DWAKDProjectors(
        student_model.config.get_text_config().hidden_size,
        teacher_model.config.get_text_config().hidden_size,
        embedding_projector="embed_t2s.weight" in state,
    )
    try:
        projectors.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"--projectors {projectors_path} do not fit this student and teacher: {error}") from None
    student, teacher = example_sides(
        ModelSide("student", len(student_tokenizer), model=student_model, unpadded_forward=False),
        ModelSide("teacher", len(teacher_tokenizer), prefix="teacher_", model=teacher_model, unpadded_forward=False),
        batch,
    )
    projectors.to(student.hidden.device)
    with torch.no_grad():
        numbers = alignment_numbers(
            student,
            teacher,
            projectors,
            DWAKDLossOptions(),
            response_tokens(student, student_tokenizer),
            response_tokens(teacher, teacher_tokenizer),
        )
    return save_alignment(numbers, args.output)


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
