"""`hf-dwakd inspect`: the alignment picture of one example, as PNG and JSON.

    hf-dwakd inspect --student DIR --teacher DIR (--text PROMPT --response TEXT | --data FILE.jsonl --index N)
        --output PATH.png [--projectors FILE | --fit_projectors FILE.jsonl [--fit_rows N]]
        [--student_tokenizer DIR] [--teacher_tokenizer DIR]

The student may be a full model or a PEFT adapter folder (with adapter_config.json); the projectors default to
the `projectors.safetensors` that the trainer saves beside the student. `--fit_projectors` instead fits them as
`projector_init="aligned"` does before training (docs/method.md, Projector start), on the first `--fit_rows` rows
of a training file: the picture of the aligned start. The objective's knobs (band, gamma) are
the defaults of `DWAKDLossOptions`. Every input is checked before a model is loaded.
"""

import argparse
import sys
from pathlib import Path

from .figure import require_matplotlib


def build_parser():
    parser = argparse.ArgumentParser(prog="hf-dwakd inspect", description=__doc__.splitlines()[0])
    parser.add_argument("--student", required=True, help="student folder: a full model or a PEFT adapter")
    parser.add_argument("--teacher", required=True, help="teacher folder or Hub id")
    parser.add_argument("--projectors", help="projectors file (default: the one the trainer saved beside --student)")
    parser.add_argument(
        "--fit_projectors",
        help="a .jsonl training file: fit the projectors on it (projector_init='aligned') instead of loading them",
    )
    parser.add_argument("--fit_rows", type=int, default=256, help="rows of --fit_projectors fitted on (default 256)")
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

    if not Path(args.student).is_dir():
        raise FileNotFoundError(f"--student {args.student} is not a folder")
    if args.fit_projectors is not None:
        if args.projectors is not None:
            raise ValueError("give either --projectors (load them) or --fit_projectors (fit them), not both")
        if not Path(args.fit_projectors).is_file():
            raise FileNotFoundError(f"--fit_projectors {args.fit_projectors} does not exist")
        if args.fit_rows < 1:
            raise ValueError(f"--fit_rows must be at least 1, got {args.fit_rows}")
        return row, None
    projectors_path = Path(args.projectors or Path(args.student) / PROJECTORS_NAME)
    if not projectors_path.is_file():
        raise FileNotFoundError(
            f"no projectors at {projectors_path}: pass --projectors FILE (DWAKDTrainer saves {PROJECTORS_NAME} "
            "beside the student)"
        )
    return row, projectors_path


def inspect(args, row, projectors_path):
    """Load both models and the projectors (or fit them), draw the example; returns the PNG and JSON paths."""
    import torch
    from safetensors.torch import load_file

    from ..objective import DWAKDLossOptions
    from ..projectors import DWAKDProjectors
    from .example import example_batch, example_sides, response_tokens
    from .figure import save_alignment
    from .numbers import alignment_numbers

    student_tokenizer = _tokenizer(args.student_tokenizer or args.student, "--student_tokenizer")
    teacher_tokenizer = _tokenizer(args.teacher_tokenizer or args.teacher, "--teacher_tokenizer")
    batch = example_batch(row, student_tokenizer, teacher_tokenizer, args.max_length, args.max_prompt_length)
    student_model, teacher_model = _student_model(args.student), _causal_lm(args.teacher)
    sizes = [model.config.get_text_config().hidden_size for model in (student_model, teacher_model)]
    if projectors_path is None:
        projectors = DWAKDProjectors(*sizes)
        fit_on_rows(projectors, student_model, teacher_model, student_tokenizer, teacher_tokenizer, args)
    else:
        state = load_file(str(projectors_path))
        projectors = DWAKDProjectors(*sizes, embedding_projector="embed_t2s.weight" in state)
        try:
            projectors.load_state_dict(state)
        except RuntimeError as error:
            raise ValueError(f"--projectors {projectors_path} do not fit this student and teacher: {error}") from None
    student, teacher = example_sides(
        student_model, teacher_model, batch, len(student_tokenizer), len(teacher_tokenizer)
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


def fit_on_rows(projectors, student_model, teacher_model, student_tokenizer, teacher_tokenizer, args, batch_size=4):
    """Fit `projectors` as `projector_init="aligned"` does, on the first `--fit_rows` rows of `--fit_projectors`,
    with the default ridge of `DWAKDConfig`."""
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
    vocab_sizes = (len(student_tokenizer), len(teacher_tokenizer))
    batches = (
        example_sides(student_model, teacher_model, collate([prepared[i] for i in range(start, end)]), *vocab_sizes)
        for start, end in ((s, min(s + batch_size, len(prepared))) for s in range(0, len(prepared), batch_size))
    )
    projectors.to(next(student_model.parameters()).device)
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


def _tokenizer(path, flag):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"no tokenizer at {path} ({error}): pass {flag}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _student_model(path):
    """A full causal LM, or the base model with the adapter of a PEFT folder applied."""
    if (Path(path) / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        return AutoPeftModelForCausalLM.from_pretrained(path)
    return _causal_lm(path)


def _causal_lm(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)
