"""Does DWA-KD distil better? The paper's protocol in miniature, on the two models that install from PyPI.

    python benchmarks/quality.py --data_dir ../shared/data --output_dir quality-run [budget flags, see --help]

1. Teacher: Gemma-3-270M (SentencePiece, 262k vocabulary) with LoRA, fine-tuned on the first
   `--teacher_examples` rows of dolly/train.jsonl, as the paper fine-tunes its teachers first. The adapter is
   cached under ~/.cache/hf_dwakd/quality/ keyed by its settings, so it is trained once.
2. Students: SmolLM2-135M-Instruct (byte-level BPE, 49k) with LoRA, one fixed budget for every row (the same
   `--student_examples` training rows, steps, learning rates and seed): `sft`, `dskd` and `dwakd` through
   DWAKDTrainer, DWA-KD ablation rows, and TRL's own GOLDTrainer (cross-tokenizer ULD).
3. Scores of the untrained models, the teacher and every student, on the first `--eval_examples` held-out
   examples of Dolly (the evaluation half of dev.jsonl), Self-Instruct, Vicuna and S-NI:
   ROUGE-L through `hf-dwakd evaluate` (sampled, `--seeds` seeds, mean ± std) and teacher-forced bits per byte
   of the reference responses (tokenizer-independent and far less noisy on a small budget).

Each phase prints its wall time; each row's seconds per training step go into the table. Everything is written
under --output_dir as it finishes (students/, eval/, quality.json, quality.md), and a rerun with the same
arguments skips what is already there, so an interrupted run resumes.
"""

import argparse
import gc
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_dwakd import DWAKDConfig, DWAKDTrainer
from hf_dwakd.demo.models import cache_root, demo_model_path
from hf_dwakd.evaluation import command as evaluate_command
from hf_dwakd.evaluation.benchmarks import BENCHMARKS, load_benchmark, read_jsonl
from hf_dwakd.evaluation.bits_per_byte import bits_per_byte
from hf_dwakd.evaluation.loading import load_model, load_tokenizer

TEACHER, STUDENT = "gemma-3-270m", "smollm2-135m-instruct"
ROW_NAMES = (
    "sft",
    "dskd",
    "dwakd weights=product",
    "dwakd weights=entropy",
    "dwakd weights=product kd_warmup",
    "dwakd no entropy weighting",
    "dwakd weights=product no Soft-DTW",
    "gold",
)


def row_fields(name, student_steps):
    """DWAKDConfig fields of row `name` (None for TRL's GOLDTrainer); each ablation changes one DWA-KD choice.

    The ablations were run against `student_weight_normalization="product"`, the default of the time; they
    name it so that the table stays reproducible now that the default is `"entropy"`.
    """
    product = dict(kd_method="dwakd", student_weight_normalization="product")
    return {
        "sft": dict(kd_method="sft"),
        "dskd": dict(kd_method="dskd"),
        "dwakd weights=product": product,
        "dwakd weights=entropy": dict(kd_method="dwakd", student_weight_normalization="entropy"),
        "dwakd weights=product kd_warmup": dict(product, kd_warmup_steps=max(1, student_steps // 4)),
        "dwakd no entropy weighting": dict(kd_method="dwakd", use_entropy_weighting=False),
        "dwakd weights=product no Soft-DTW": dict(product, use_dtw=False),
        "gold": None,
    }[name]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", required=True, help="folder with dolly/, self-inst/, vicuna/, sinst/ (DSKD)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--rows", default=",".join(ROW_NAMES), help=f"comma-separated subset of {ROW_NAMES}")
    parser.add_argument("--teacher_examples", type=int, default=320, help="teacher SFT rows (one epoch)")
    parser.add_argument("--teacher_learning_rate", type=float, default=5e-4)
    parser.add_argument("--student_examples", type=int, default=200, help="student training rows (one epoch)")
    parser.add_argument("--learning_rate", type=float, default=5e-4, help="student learning rate")
    parser.add_argument("--projector_learning_rate", type=float, default=1e-3)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--max_prompt_length", type=int, default=192)
    parser.add_argument("--lora_r", type=int, default=8, help="LoRA rank of teacher and students")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--eval_examples", type=int, default=16, help="held-out examples per benchmark")
    parser.add_argument("--seeds", type=int, default=3, help="sampling seeds of the ROUGE-L evaluation")
    parser.add_argument("--eval_max_new_tokens", type=int, default=128)
    args = parser.parse_args(argv)
    unknown = [row for row in args.rows.split(",") if row not in ROW_NAMES]
    if unknown:
        parser.error(f"--rows: unknown row(s) {unknown}; choose from {ROW_NAMES}")
    for path in ("dolly/train.jsonl", "dolly/dev.jsonl", *(source.local_file for source in BENCHMARKS.values())):
        if not (Path(args.data_dir) / path).is_file():
            parser.error(f"--data_dir: {Path(args.data_dir) / path} does not exist")
    return args


class Log:
    """Phase timer and results file: `quality.json` is rewritten whenever something finishes."""

    def __init__(self, output_dir, args):
        self.path = Path(output_dir) / "quality.json"
        self.record = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.record["arguments"] = vars(args)
        self.record.setdefault("phases", {})
        self.record.setdefault("rows", {})

    def phase(self, name, seconds):
        self.record["phases"][name] = round(seconds, 1)
        print(f"== phase {name}: {seconds:.0f} s", flush=True)
        self.save()

    def row(self, name, **values):
        self.record["rows"].setdefault(name, {}).update(values)
        self.save()

    def save(self):
        self.path.write_text(json.dumps(self.record, indent=2) + "\n")


def lora_config(args):
    return LoraConfig(
        r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    )


def training_fields(args, output_dir, learning_rate):
    """The budget every row shares (TRL SFTConfig fields, so GOLDConfig takes them too)."""
    return dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=1,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        max_length=args.max_length,
        seed=args.seed,
        data_seed=args.seed,
        bf16=False,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        activation_checkpointing=False,
        use_cpu=not torch.cuda.is_available(),
    )


def train_teacher(args, log):
    """The teacher's LoRA adapter: Gemma-3-270M SFT on Dolly, trained once per settings and cached."""
    settings = dict(
        model=str(demo_model_path(TEACHER)),
        examples=args.teacher_examples,
        lr=args.teacher_learning_rate,
        batch=args.batch_size,
        max_length=args.max_length,
        max_prompt_length=args.max_prompt_length,
        lora_r=args.lora_r,
        seed=args.seed,
        data=str(Path(args.data_dir).resolve() / "dolly/train.jsonl"),
    )
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    adapter = cache_root() / "quality" / f"teacher-{key}"
    if (adapter / "adapter_config.json").is_file():
        print(f"teacher adapter cached at {adapter}")
        return adapter
    rows = read_jsonl(Path(args.data_dir) / "dolly/train.jsonl")[: args.teacher_examples]
    trainer = DWAKDTrainer(
        str(demo_model_path(TEACHER)),
        args=DWAKDConfig(
            kd_method="sft",
            max_prompt_length=args.max_prompt_length,
            **training_fields(args, adapter.with_name(adapter.name + "-run"), args.teacher_learning_rate),
        ),
        train_dataset=Dataset.from_list(rows),
        peft_config=lora_config(args),
    )
    result = trainer.train()
    log.row(
        "teacher SFT",
        seconds_per_step=result.metrics["train_runtime"] / trainer.state.global_step,
        steps=trainer.state.global_step,
        adapter=str(adapter),
    )
    trainer.save_model(str(adapter))
    return adapter


def merged_teacher(adapter):
    base = AutoModelForCausalLM.from_pretrained(demo_model_path(TEACHER))
    return PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().eval()


def train_student(name, args, teacher, train_rows, output_dir):
    """Train row `name` on the shared budget and save its adapter; returns seconds per optimizer step."""
    student_path = demo_model_path(STUDENT)
    fields = training_fields(args, output_dir, args.learning_rate)
    overrides = row_fields(name, student_steps=math.ceil(len(train_rows) / args.batch_size))
    if overrides is None:
        trainer = gold_trainer(args, teacher, train_rows, fields)
    else:
        if overrides["kd_method"] != "sft":
            overrides["projector_learning_rate"] = args.projector_learning_rate
        trainer = DWAKDTrainer(
            str(student_path),
            teacher_model=None if overrides["kd_method"] == "sft" else teacher,
            args=DWAKDConfig(max_prompt_length=args.max_prompt_length, **overrides, **fields),
            train_dataset=Dataset.from_list(train_rows),
            teacher_processing_class=AutoTokenizer.from_pretrained(demo_model_path(TEACHER)),
            peft_config=lora_config(args),
        )
    result = trainer.train()
    trainer.save_model(str(output_dir))
    seconds = result.metrics["train_runtime"] / trainer.state.global_step
    del trainer
    gc.collect()
    return seconds


def gold_trainer(args, teacher, train_rows, fields):
    """TRL's GOLDTrainer as a user would set it up for two tokenizers: ULD loss with the teacher's tokenizer.

    Its byte-offset ("extended") ULD refuses Gemma's SentencePiece tokenizer, so it runs with
    `use_extended_uld=False`. `lmbda=0` trains on the dataset's responses only (no on-policy generation), the same
    data as the other rows; CE and distillation are weighted 0.5 / 0.5 like the DWAKDTrainer rows. GOLD refuses an
    example whose completion fills `max_length`, so each row is first cut to the token budget DWAKDTrainer's
    pipeline gives it: the prompt's first `max_prompt_length` student tokens, the response up to `max_length`.
    """
    from trl.experimental.gold import GOLDConfig, GOLDTrainer

    config = GOLDConfig(
        use_uld_loss=True,
        use_extended_uld=False,
        teacher_tokenizer_name_or_path=str(demo_model_path(TEACHER)),
        lmbda=0.0,
        uld_crossentropy_weight=0.5,
        uld_distillation_weight=0.5,
        **fields,
    )
    tokenizer = AutoTokenizer.from_pretrained(demo_model_path(STUDENT))
    dataset = Dataset.from_list([within_budget(row, tokenizer, args) for row in train_rows])
    return GOLDTrainer(
        model=AutoModelForCausalLM.from_pretrained(demo_model_path(STUDENT)),
        teacher_model=teacher,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(args),
    )


def within_budget(row, tokenizer, args):
    """`row` as prompt-completion text cut to the student's token budget (a few tokens spare for special tokens and
    for re-tokenizing the cut text)."""
    prompt_ids = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"][: args.max_prompt_length]
    room = args.max_length - len(prompt_ids) - 8
    completion_ids = tokenizer(row["output"], add_special_tokens=False)["input_ids"][:room]
    return {"prompt": tokenizer.decode(prompt_ids), "completion": tokenizer.decode(completion_ids)}


def score(name, model_path, adapter, args, eval_dir):
    """ROUGE-L through `hf-dwakd evaluate`, then bits per byte on the same examples; both cached on disk."""
    results_file = eval_dir / name / "results.json"
    if not results_file.is_file():
        argv = [
            "--model_name_or_path",
            str(model_path),
            "--name",
            name,
            "--data_dir",
            args.data_dir,
            "--output_dir",
            str(eval_dir),
            "--seeds",
            str(args.seeds),
            "--max_examples",
            str(args.eval_examples),
            "--max_length",
            str(args.max_prompt_length + args.eval_max_new_tokens),
            "--max_prompt_length",
            str(args.max_prompt_length),
        ]
        evaluate_command.main(argv + (["--adapter", str(adapter)] if adapter else []))
    results = json.loads(results_file.read_text())
    bpb_file = eval_dir / name / "bits_per_byte.json"
    if not bpb_file.is_file():
        model, tokenizer = (
            load_model(str(model_path), str(adapter) if adapter else None),
            load_tokenizer(model_path, model_path),
        )
        bpb = {}
        for benchmark in BENCHMARKS:
            examples = load_benchmark(benchmark, args.data_dir).examples[: args.eval_examples]
            bpb[benchmark] = bits_per_byte(model, tokenizer, examples, args.max_prompt_length)
        bpb_file.write_text(json.dumps(bpb, indent=2) + "\n")
        del model
        gc.collect()
    bpb = json.loads(bpb_file.read_text())
    return {
        "rouge_l": {key: [value["mean"], value["std"]] for key, value in results["benchmarks"].items()},
        "rouge_l_average": results["average"],
        "bits_per_byte": bpb,
        "bits_per_byte_average": sum(bpb.values()) / len(bpb),
    }


def markdown(record):
    """Two tables: ROUGE-L (mean ± std over seeds) and bits per byte, one row per model."""
    names = list(BENCHMARKS)
    titles = {"dolly": "Dolly", "self-inst": "Self-Inst", "vicuna": "Vicuna", "sinst": "S-NI"}
    head = "| model | " + " | ".join(titles[name] for name in names)
    lines = [head + " | Avg ROUGE-L ↑ | bits/byte avg ↓ | s/step |", "|---|" + "---:|" * (len(names) + 3)]
    for row, values in record["rows"].items():
        if "rouge_l" not in values:
            continue
        cells = [f"{values['rouge_l'][name][0]:.2f} ± {values['rouge_l'][name][1]:.2f}" for name in names]
        step = f"{values['seconds_per_step']:.2f}" if "seconds_per_step" in values else "–"
        lines.append(
            f"| {row} | "
            + " | ".join(cells)
            + f" | {values['rouge_l_average']:.2f} | {values['bits_per_byte_average']:.4f} | {step} |"
        )
    lines += ["", head + " |", "|---|" + "---:|" * len(names)]
    for row, values in record["rows"].items():
        if "bits_per_byte" in values:
            lines.append(f"| {row} | " + " | ".join(f"{values['bits_per_byte'][name]:.4f}" for name in names) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    log = Log(output_dir, args)
    eval_dir = output_dir / "eval"
    started = time.perf_counter()

    phase = time.perf_counter()
    teacher_path, student_path = demo_model_path(TEACHER), demo_model_path(STUDENT)
    log.phase("models", time.perf_counter() - phase)

    phase = time.perf_counter()
    adapter = train_teacher(args, log)
    log.phase("teacher SFT", time.perf_counter() - phase)

    phase = time.perf_counter()
    reference_models = {
        "Gemma-3-270M untrained": (teacher_path, None),
        "teacher: Gemma-3-270M + Dolly SFT": (teacher_path, adapter),
        "SmolLM2-135M-Instruct untrained (student)": (student_path, None),
    }
    for name, (path, model_adapter) in reference_models.items():
        log.row(name, **score(name, path, model_adapter, args, eval_dir))
    log.phase("scores of the untrained models and the teacher", time.perf_counter() - phase)

    train_rows = read_jsonl(Path(args.data_dir) / "dolly/train.jsonl")[: args.student_examples]
    teacher = None
    for name in args.rows.split(","):
        row_dir = output_dir / "students" / name.replace(" ", "_").replace("=", "-")
        if not (row_dir / "adapter_config.json").is_file():
            if teacher is None:
                teacher = merged_teacher(adapter)
            phase = time.perf_counter()
            try:
                seconds = train_student(name, args, teacher, train_rows, row_dir)
            except Exception as error:  # one failing row must not lose the others
                print(f"row {name!r} failed: {error!r}", file=sys.stderr, flush=True)
                log.row(name, error=repr(error))
                continue
            log.row(name, seconds_per_step=seconds)
            log.phase(f"train {name}", time.perf_counter() - phase)
        phase = time.perf_counter()
        log.row(name, **score(name, student_path, row_dir, args, eval_dir))
        log.phase(f"score {name}", time.perf_counter() - phase)
        (output_dir / "quality.md").write_text(markdown(log.record))

    log.phase("total", time.perf_counter() - started)
    (output_dir / "quality.md").write_text(markdown(log.record))
    print(markdown(log.record))


if __name__ == "__main__":
    main()
