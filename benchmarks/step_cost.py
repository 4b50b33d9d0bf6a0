"""Seconds and peak memory of one DWAKDTrainer training step for each `kd_method` (the paper's Table 7).

Run: python benchmarks/step_cost.py [--device cpu|cuda] [--steps 4] [--warmup 1] [--batch_size 4] [--seq_len 256]
     [--methods dwakd sft dskd uld mined multilevel_ot dwakd_no_dtw] [--bf16]
     [--student_hidden 256] [--student_layers 2] [--teacher_hidden 512] [--teacher_layers 2]
     [--pair random|demo] [--reference-src PATH] [--max_new_tokens 128]

`--pair demo` times the CPU demo's two real models instead (`hf_dwakd.demo.models`, converted once into
~/.cache/hf_dwakd), in both directions: Gemma-3-270M student with LoRA r8 on every linear layer and
SmolLM2-135M-Instruct teacher, then SmolLM2 student with LoRA and Gemma-3 teacher; on the demo's own Dolly rows
(`--seq_len` and half of it for the prompt bound the tokens). A third direction, named only with `--directions`,
has a teacher of Gemma-3-1B's shape with random weights: a teacher whose decoder, not its vocabulary, is most of it.
`--reference-src PATH`: also time the package in PATH (a checkout of another commit, e.g.
`git archive 189f430 | tar -x -C /tmp/ref`) in the same run, each of its workers with PYTHONPATH=PATH, and print
the ratios of the two.

A step is what the real trainer does between `on_step_begin` and `on_step_end`: student and teacher forward,
loss, backward, gradient clipping, optimizer step. Each method runs in a fresh subprocess (so memory peaks do not
mix) on the same random models and data: a GPT-2-shaped student and a Llama-shaped teacher with the real GPT-2 and
Llama-2 tokenizers of the test fixtures, trained on bundled Dolly prompts whose responses are lengthened (several
Dolly responses joined) so that every example fills `--seq_len` tokens on the side that tokenizes it longer.
`dwakd_no_dtw` is DWA-KD with `use_dtw=False`: the difference to `dwakd` is the Soft-DTW alignment's cost.
`dwakd_two_teachers` distils from two teachers at once, weighted equally: on the random pair, the Llama-shaped teacher
and one of the same shape on the SmolLM2 tokenizer of the test fixtures (a third vocabulary); with `--pair demo`, the
quality benchmark's pair (Qwen2.5-Coder-1.5B teacher) and Gemma-3-270M as the second teacher, as in its two-teacher
row (base weights here: the time does not depend on them).
`dwakd_cached` and `dskd_cached` first build a teacher cache of the run's rows (`hf_dwakd.teacher_cache`; its time
and size on disk are reported) and then train from it, with only the teacher's embedding and output layers loaded.
`dwakd_on_policy` is DWA-KD with `lmbda=1`: every step's responses are sampled by the student (`--max_new_tokens`)
and rebuilt for both tokenizers before the step (`hf_dwakd.on_policy`). The Trainer samples before
`on_step_begin`, so its sampling is timed apart (the median generation seconds, and sampling with the rebuild) and
added to the step for its total; its memory peaks are the training step's only.

Time is the median over `--steps` steps after `--warmup` untimed ones (Numba compilation, optimizer state):
wall seconds, and the process's CPU seconds (all threads), which a shared CPU's load disturbs less (threads
spinning at OpenMP barriers or on a CUDA synchronize still count: on CUDA the two are about equal).
Memory: "step peak" is the peak during a step above the memory held when it starts (activations, logits, loss
intermediates, gradients); "total peak" is the absolute peak, model weights and optimizer state included (on
CUDA `torch.cuda.max_memory_allocated`, on CPU the process's resident set, sampled every millisecond).
"""

import argparse
import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

from hf_dwakd.config import KD_METHODS
from hf_dwakd.loading import load_causal_lm, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TOKENIZERS = ROOT / "tests" / "fixtures" / "tokenizers"
DOLLY = ROOT / "hf_dwakd" / "demo" / "data" / "dolly_train.jsonl"
# --pair demo: (student, teacher) names of `hf_dwakd.demo.models` per direction.
DEMO_DIRECTIONS = {
    "gemma-3-270m <- smollm2-135m-instruct": ("gemma-3-270m", "smollm2-135m-instruct"),
    "smollm2-135m-instruct <- gemma-3-270m": ("smollm2-135m-instruct", "gemma-3-270m"),
    "smollm2-135m-instruct <- gemma-3-1b-random": ("smollm2-135m-instruct", "gemma-3-1b-random"),
    # The quality benchmark's pair (issue M): a 1.5B teacher whose decoder is most of it.
    "smollm2-135m-instruct <- qwen2.5-coder-1.5b-instruct": ("smollm2-135m-instruct", "qwen2.5-coder-1.5b-instruct"),
}
# Not a demo model: Gemma-3-1B's sizes (from its released config) on Gemma-3-270M's config and tokenizer, with random
# weights. Its decoder layers, not its vocabulary, hold most of its 1.0B parameters, as in the paper's teachers.
GEMMA_3_1B_SIZES = dict(
    hidden_size=1152, intermediate_size=6912, num_hidden_layers=26, num_attention_heads=4, num_key_value_heads=1
)
# Every kd_method at its defaults, and DWA-KD without Soft-DTW so that the alignment's own cost shows.
VARIANTS = {method: dict(kd_method=method) for method in KD_METHODS}
VARIANTS["dwakd_no_dtw"] = dict(kd_method="dwakd", use_dtw=False)
# Trained from a teacher cache built just before, in the same process.
CACHED_VARIANTS = {"dwakd_cached": "dwakd", "dskd_cached": "dskd"}
VARIANTS.update({name: dict(kd_method=method) for name, method in CACHED_VARIANTS.items()})
# Two teachers at once, weighted equally. Random pair: the Llama-shaped teacher, and a second of the same shape on the
# SmolLM2 tokenizer (a third vocabulary). --pair demo: the directions below, with this second teacher.
TWO_TEACHER_VARIANTS = {"dwakd_two_teachers": "dwakd"}
SECOND_DEMO_TEACHER = {"smollm2-135m-instruct <- qwen2.5-coder-1.5b-instruct": "gemma-3-270m"}
VARIANTS.update({name: dict(kd_method=method) for name, method in TWO_TEACHER_VARIANTS.items()})
# Every step on-policy: the student samples each response (`hf_dwakd.on_policy`).
ON_POLICY_VARIANTS = {"dwakd_on_policy": "dwakd"}
VARIANTS.update({name: dict(kd_method=method, lmbda=1.0) for name, method in ON_POLICY_VARIANTS.items()})
# DWA-KD vs DSKD in the paper (Section "Efficiency", batch 4): 0.45 s vs 0.35 s a step, 29.9 GB vs 26.4 GB.
PAPER_TIME_RATIO = 0.45 / 0.35
PAPER_MEMORY_RATIO = 29.9 / 26.4
RESULT_PREFIX = "step_cost_result: "
MIB = 2**20
DEMO_METHODS = ["sft", "dskd", "dwakd"]  # --pair demo's default


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per method (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before the timed ones")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=256, help="tokens per example on the longer side")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=list(VARIANTS),
        help=f"default: all, or {' '.join(DEMO_METHODS)} with --pair demo",
    )
    parser.add_argument(
        "--max_new_tokens", type=int, default=128, help="tokens sampled per response by the on-policy variants"
    )
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision (DWAKDConfig bf16=True)")
    parser.add_argument("--student_hidden", type=int, default=256, help="GPT-2-shaped student's width")
    parser.add_argument("--student_layers", type=int, default=2)
    parser.add_argument("--teacher_hidden", type=int, default=512, help="Llama-shaped teacher's width")
    parser.add_argument("--teacher_layers", type=int, default=2)
    parser.add_argument("--pair", choices=("random", "demo"), default="random", help="random models or the demo's")
    parser.add_argument("--reference-src", type=Path, help="also time the hf_dwakd package found in this folder")
    parser.add_argument(
        "--directions", nargs="+", choices=list(DEMO_DIRECTIONS), help="--pair demo: which (default: the demo's two)"
    )
    parser.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--direction", choices=list(DEMO_DIRECTIONS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("student_hidden", "teacher_hidden"):
        if getattr(args, name) < 64 or getattr(args, name) % 64:
            parser.error(f"--{name} must be a multiple of 64 (the attention head width), got {getattr(args, name)}.")
    for name in ("steps", "batch_size", "student_layers", "teacher_layers", "max_new_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}.")
    if args.warmup < 0:
        parser.error(f"--warmup must be at least 0, got {args.warmup}.")
    if args.seq_len < 16:
        parser.error(f"--seq_len must be at least 16 (half of it goes to the prompt), got {args.seq_len}.")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device; use --device cpu.")
    single = [name for name in args.directions or list(DEMO_DIRECTIONS)[:2] if name not in SECOND_DEMO_TEACHER]
    if args.pair == "demo" and set(args.methods or []) & set(TWO_TEACHER_VARIANTS) and single:
        parser.error(
            f"{', '.join(TWO_TEACHER_VARIANTS)} with --pair demo: pass --directions {' '.join(SECOND_DEMO_TEACHER)!r} "
            f"only (no second teacher for {', '.join(single)})."
        )
    if args.reference_src is not None and not (args.reference_src / "hf_dwakd" / "__init__.py").is_file():
        parser.error(f"--reference-src {args.reference_src} holds no hf_dwakd package (hf_dwakd/__init__.py).")
    return args


# ---- the worker: one method, one process -------------------------------------------------------------------------


def fixture_tokenizer(name):
    return load_tokenizer(TOKENIZERS / name)


def random_causal_lm(tokenizer, family, hidden_size, num_layers, seed, device):
    """A randomly initialised causal LM with `tokenizer`'s vocabulary and 64-wide attention heads, built on
    `device` (initialising a large model on the GPU takes seconds, on the CPU minutes)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    common = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    heads = hidden_size // 64
    with torch.device(device):
        if family == "gpt2":
            return GPT2LMHeadModel(GPT2Config(n_embd=hidden_size, n_layer=num_layers, n_head=heads, **common))
        config = LlamaConfig(
            hidden_size=hidden_size,
            intermediate_size=8 * hidden_size // 3,
            num_hidden_layers=num_layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            **common,
        )
        return LlamaForCausalLM(config)


def build_cache(teacher, teacher_tokenizer, student_tokenizer, config, rows):
    """Build the teacher cache of `rows` for `config` (the teacher saved first unless it was loaded from a folder);
    returns the teacher's folder and the build's seconds, bytes on disk and examples."""
    import ctypes
    import gc

    from datasets import Dataset

    from hf_dwakd.teacher_cache import build_teacher_cache

    scratch = Path(tempfile.mkdtemp(prefix="hf_dwakd_step_cost_cache_"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)  # the saved teacher and cache, gigabytes
    folder = Path(teacher.config._name_or_path or scratch / "missing")
    if not (folder / "config.json").is_file():
        folder = scratch / "teacher"
        teacher.save_pretrained(folder)
    config.teacher_model_name_or_path = str(folder)
    config.teacher_cache_dir = str(scratch / "cache")
    del teacher
    gc.collect()
    started = time.perf_counter()
    build_teacher_cache(config, Dataset.from_list(rows), student_tokenizer=student_tokenizer,
                        teacher_tokenizer=teacher_tokenizer)
    seconds = time.perf_counter() - started
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # the build's freed heap is given back before the steps are measured
    size = sum(path.stat().st_size for path in (scratch / "cache" / "train").rglob("*") if path.is_file())
    return str(folder), {"cache_build_seconds": seconds, "cache_bytes": size, "cache_examples": len(rows)}


def dolly_rows(count, seq_len):
    """`count` prompt-completion rows: a Dolly prompt and Dolly responses joined until the text is longer than
    `seq_len` tokens of either tokenizer (8 characters a token is more than English ever takes)."""
    dolly = [json.loads(line) for line in DOLLY.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = []
    for index in range(count):
        parts, next_row = [], index
        while sum(len(part) for part in parts) < 8 * seq_len:
            parts.append(dolly[next_row % len(dolly)]["output"])
            next_row += 1
        rows.append({"prompt": dolly[index % len(dolly)]["prompt"], "completion": "\n\n".join(parts)})
    return rows


class ResidentPeak:
    """The process's peak resident memory since the last `restart()`, sampled every millisecond on a thread."""

    def __init__(self, interval=0.001):
        self._process = psutil.Process()
        self._interval = interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._stop.wait(self._interval):
            rss = self._process.memory_info().rss
            with self._lock:
                self.peak = max(self.peak, rss)

    def restart(self):
        """Start a new window; returns the resident memory now."""
        rss = self._process.memory_info().rss
        with self._lock:
            self.peak = rss
        return rss

    def read(self):
        rss = self._process.memory_info().rss
        with self._lock:
            self.peak = max(self.peak, rss)
            return self.peak

    def close(self):
        self._stop.set()
        self._thread.join()


def step_meter(device, warmup):
    """A TrainerCallback recording seconds and memory of every step after the first `warmup`."""
    from transformers import TrainerCallback

    cuda = device == "cuda"

    class StepMeter(TrainerCallback):
        def __init__(self):
            self.seconds, self.cpu_seconds, self.step_peaks, self.total_peaks = [], [], [], []
            self._resident = None if cuda else ResidentPeak()

        def on_step_begin(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                self._held = torch.cuda.memory_allocated()
            else:
                self._held = self._resident.restart()
            self._started, self._cpu_started = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            seconds, cpu_seconds = time.perf_counter() - self._started, time.process_time() - self._cpu_started
            peak = torch.cuda.max_memory_allocated() if cuda else self._resident.read()
            if state.global_step > warmup:
                self.seconds.append(seconds)
                self.cpu_seconds.append(cpu_seconds)
                self.step_peaks.append((peak - self._held) / MIB)
                self.total_peaks.append(peak / MIB)

        def on_train_end(self, args, state, control, **kwargs):
            if self._resident is not None:
                self._resident.close()

    return StepMeter()


def demo_pair(args, uses_teacher):
    """The demo's student (LoRA r8 on every linear layer, as recipes/demo_cpu.yaml) and teacher for
    `args.direction`, with their tokenizers and the LoRA config."""
    from peft import LoraConfig
    from transformers import AutoConfig, AutoModelForCausalLM

    from hf_dwakd.demo.models import demo_model_path

    student_name, teacher_name = DEMO_DIRECTIONS[args.direction]
    random_teacher = teacher_name == "gemma-3-1b-random"
    paths = [demo_model_path(student_name), demo_model_path("gemma-3-270m" if random_teacher else teacher_name)]
    student_tokenizer, teacher_tokenizer = (load_tokenizer(path) for path in paths)
    torch.manual_seed(1)
    student = load_causal_lm(paths[0], role="student", dtype=torch.float32).to(args.device)
    teacher = None
    if uses_teacher and random_teacher:
        fields = {**AutoConfig.from_pretrained(paths[1]).to_dict(), **GEMMA_3_1B_SIZES}
        del fields["layer_types"]  # rebuilt for 26 layers from the sliding-window pattern
        del fields["_name_or_path"]  # not the 270M folder: the cached rows save this teacher and build from it
        teacher = AutoModelForCausalLM.from_config(AutoConfig.for_model(**fields), dtype=torch.float32)
        teacher.to(args.device)
    elif uses_teacher:
        teacher = load_causal_lm(paths[1], role="teacher", dtype=torch.float32).to(args.device)
    if uses_teacher and args.worker in TWO_TEACHER_VARIANTS:
        second_path = demo_model_path(SECOND_DEMO_TEACHER[args.direction])
        second = load_causal_lm(second_path, role="teacher", dtype=torch.float32).to(args.device)
        teacher, teacher_tokenizer = [teacher, second], [teacher_tokenizer, load_tokenizer(second_path)]
    peft_config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    return student, teacher, student_tokenizer, teacher_tokenizer, peft_config


def demo_rows(count):
    """The first `count` rows of the demo's training data (DSKD jsonl: prompt, output)."""
    lines = [line for line in DOLLY.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [{"prompt": row["prompt"], "output": row["output"]} for row in map(json.loads, lines[:count])]


def run_worker(args):
    """Train `warmup + steps` steps of one variant and print its figures as one JSON line."""
    import transformers
    from datasets import Dataset

    from hf_dwakd import DWAKDConfig, DWAKDTrainer

    transformers.logging.set_verbosity_error()
    options = VARIANTS[args.worker]
    uses_teacher = options["kd_method"] != "sft"
    total_steps = args.warmup + args.steps
    if args.pair == "demo":
        student, teacher, student_tokenizer, teacher_tokenizer, peft_config = demo_pair(args, uses_teacher)
        rows = demo_rows(args.batch_size * total_steps)
    else:
        student_tokenizer, teacher_tokenizer = fixture_tokenizer("gpt2"), fixture_tokenizer("llama2")
        student = random_causal_lm(
            student_tokenizer, "gpt2", args.student_hidden, args.student_layers, 1, args.device
        )
        teacher = None
        if uses_teacher:
            teacher = random_causal_lm(
                teacher_tokenizer, "llama", args.teacher_hidden, args.teacher_layers, 2, args.device
            )
        peft_config, rows = None, dolly_rows(args.batch_size * total_steps, args.seq_len)
        if args.worker in TWO_TEACHER_VARIANTS:
            second_tokenizer = load_tokenizer("smollm2")
            shape = (args.teacher_hidden, args.teacher_layers)
            second = random_causal_lm(second_tokenizer, "llama", *shape, 3, args.device)
            teacher, teacher_tokenizer = [teacher, second], [teacher_tokenizer, second_tokenizer]
    total_steps = args.warmup + args.steps
    config = DWAKDConfig(
        output_dir=str(Path(tempfile.gettempdir()) / "hf_dwakd_step_cost"),
        per_device_train_batch_size=args.batch_size,
        max_steps=total_steps,
        learning_rate=5e-4,
        logging_steps=total_steps,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=args.device == "cpu",
        bf16=args.bf16,
        dataloader_num_workers=0,
        seed=0,
        max_length=args.seq_len,
        max_prompt_length=args.seq_len // 2,
        # The demo recipe's setting (recomputing activations only saves memory); the random pair keeps TRL's.
        **({"activation_checkpointing": False} if args.pair == "demo" else {}),
        **({"max_new_tokens": args.max_new_tokens} if args.worker in ON_POLICY_VARIANTS else {}),
        **options,
    )
    cache_figures = {}
    if args.worker in CACHED_VARIANTS:
        teacher, cache_figures = build_cache(teacher, teacher_tokenizer, student_tokenizer, config, rows)
    meter = step_meter(args.device, args.warmup)
    trainer = DWAKDTrainer(
        model=student,
        teacher_model=teacher,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=student_tokenizer,
        teacher_processing_class=teacher_tokenizer if uses_teacher else None,
        callbacks=[meter],
        peft_config=peft_config,
    )
    data = trainer.train_dataset
    sampling = time_sampling(trainer, args.warmup) if args.worker in ON_POLICY_VARIANTS else None
    trainer.train()

    def mean_tokens(column):
        return statistics.mean(len(ids) for ids in data[column])

    def mean_responses(column):
        return statistics.mean(sum(label != -100 for label in labels) for labels in data[column])

    result = {
        "variant": args.worker,
        "seconds": statistics.median(meter.seconds),
        "cpu_seconds": statistics.median(meter.cpu_seconds),
        "step_peak_mib": max(meter.step_peaks),
        "total_peak_mib": max(meter.total_peaks),
        "student_tokens": mean_tokens("input_ids"),
        "student_response_tokens": mean_responses("labels"),
        "teacher_tokens": mean_tokens("teacher_input_ids") if uses_teacher else None,
        "teacher_response_tokens": mean_responses("teacher_labels") if uses_teacher else None,
        **cache_figures,
        **(sampling.figures() if sampling is not None else {}),
    }
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def time_sampling(trainer, warmup):
    """Wrap the trainer's `ResponseSampler.step_batches` to time each step's sampling after the first `warmup`."""
    sampler = trainer.response_sampler
    step_batches = sampler.step_batches

    class SamplingTimes:
        wall, cpu, generation, tokens = [], [], [], []

        def figures(self):
            return {
                "generation_seconds": statistics.median(self.generation),
                "sampling_seconds": statistics.median(self.wall),
                "sampling_cpu_seconds": statistics.median(self.cpu),
                "sampled_tokens": statistics.mean(self.tokens),
            }

    times = SamplingTimes()

    def timed(batches, step, models, accelerator):
        started, cpu_started = time.perf_counter(), time.process_time()
        batches, record = step_batches(batches, step, models, accelerator)
        if step >= warmup:
            times.wall.append(time.perf_counter() - started)
            times.cpu.append(time.process_time() - cpu_started)
            times.generation.append(record.seconds)
            times.tokens.append(record.tokens / record.responses)
        return batches, record

    sampler.step_batches = timed
    return times


# ---- the driver: one subprocess per method, then the table -------------------------------------------------------


WORKER_OPTIONS = (
    "device", "steps", "warmup", "batch_size", "seq_len", "student_hidden", "student_layers", "teacher_hidden",
    "teacher_layers", "pair", "max_new_tokens",
)


def run_variant(variant, args, source, direction=None):
    """The worker's figures with the package in folder `source`, or None (its error printed) when it failed."""
    command = [sys.executable, __file__, "--worker", variant, *(["--bf16"] if args.bf16 else [])]
    for name in WORKER_OPTIONS:
        command += [f"--{name}", str(getattr(args, name))]
    if direction is not None:
        command += ["--direction", direction]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(source)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        print(f"{variant} failed (exit {done.returncode}):\n{done.stderr[-4000:]}", file=sys.stderr, flush=True)
        return None
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def print_table(results, args, title):
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({os.cpu_count()} cores)"
    if args.pair == "demo":
        models = f"student <- teacher: {title}, LoRA r8 on the student's linear layers"
    else:
        models = (
            f"student gpt2 d={args.student_hidden} x{args.student_layers}, teacher llama d={args.teacher_hidden} "
            f"x{args.teacher_layers}; {title}"
        )
    print(
        f"\n{device}, {'bf16' if args.bf16 else 'fp32'}, batch {args.batch_size}, seq_len {args.seq_len}, median of "
        f"{args.steps} steps after {args.warmup} warm-up; {models}\n"
    )
    print(
        "| method | s/step | CPU s/step | step peak MiB | total peak MiB "
        "| tokens / response tokens (student, teacher) |"
    )
    print("|---|---|---|---|---|---|")
    for r in results.values():
        tokens = f"{r['student_tokens']:.0f} / {r['student_response_tokens']:.0f}"
        if r["teacher_tokens"] is not None:
            tokens += f", {r['teacher_tokens']:.0f} / {r['teacher_response_tokens']:.0f}"
        print(
            f"| {r['variant']} | {r['seconds']:.3f} | {r['cpu_seconds']:.3f} | {r['step_peak_mib']:.0f} "
            f"| {r['total_peak_mib']:.0f} | {tokens} |"
        )
    print_cache_figures(results, args)
    for name, method in TWO_TEACHER_VARIANTS.items():
        if name in results and method in results:
            print_ratios(
                f"{name} / {method}",
                results[name],
                results[method],
                time_note="a second teacher's forward and loss",
                memory_note="its weights included",
            )
    print_on_policy_figures(results, args)
    if "dwakd" in results and "dskd" in results:
        print_ratios(
            "dwakd / dskd",
            results["dwakd"],
            results["dskd"],
            time_note=f"paper {PAPER_TIME_RATIO:.2f}",
            memory_note=f"paper {PAPER_MEMORY_RATIO:.2f}, 7B-scale weights included",
        )


def print_ratios(label, ours, theirs, time_note, memory_note):
    print(
        f"\n{label}: time {ours['seconds'] / theirs['seconds']:.2f} ({time_note}), CPU time "
        f"{ours['cpu_seconds'] / theirs['cpu_seconds']:.2f}, step peak memory "
        f"{ours['step_peak_mib'] / theirs['step_peak_mib']:.2f}, total peak memory "
        f"{ours['total_peak_mib'] / theirs['total_peak_mib']:.2f} ({memory_note})"
    )


def print_comparison(reference, current, title):
    """Reference over current: how many times faster, and how much less memory, the current code is."""
    print(f"\nreference -> current, {title}\n")
    print("| method | s/step | speed-up | CPU s/step | step peak MiB | step peak lower by | total peak MiB |")
    print("|---|---|---|---|---|---|---|")
    for variant in current:
        if variant not in reference:
            continue
        old, new = reference[variant], current[variant]
        print(
            f"| {variant} | {old['seconds']:.2f} -> {new['seconds']:.2f} | {old['seconds'] / new['seconds']:.2f}x "
            f"| {old['cpu_seconds']:.2f} -> {new['cpu_seconds']:.2f} "
            f"| {old['step_peak_mib']:.0f} -> {new['step_peak_mib']:.0f} "
            f"| {100 * (1 - new['step_peak_mib'] / old['step_peak_mib']):.0f} % "
            f"| {old['total_peak_mib']:.0f} -> {new['total_peak_mib']:.0f} |"
        )


def print_cache_figures(results, args):
    """Build cost, disk size and break-even of each cached row, and the cached DWA-KD against live DSKD."""
    for name, method in CACHED_VARIANTS.items():
        if name not in results or method not in results:
            continue
        cached, live = results[name], results[method]
        per_example = cached["cache_build_seconds"] / cached["cache_examples"]
        saved_per_example = (live["seconds"] - cached["seconds"]) / args.batch_size
        break_even = "no break-even: no step time saved"
        if saved_per_example > 0:
            break_even = f"break-even after {per_example / saved_per_example:.2f} epochs (build seconds per example / "
            break_even += "seconds saved per example)"
        print(
            f"\n{name}: build {cached['cache_build_seconds']:.1f} s for {cached['cache_examples']} examples (teacher "
            f"load included), {cached['cache_bytes'] / MIB * 1000 / cached['cache_examples']:.1f} MiB on disk per "
            f"1,000 examples; step time {cached['seconds'] / live['seconds']:.2f}x, total peak "
            f"{cached['total_peak_mib'] / live['total_peak_mib']:.2f}x live {method}; {break_even}"
        )
    if "dwakd_cached" in results and "dskd" in results:
        print_ratios(
            "dwakd_cached / live dskd",
            results["dwakd_cached"],
            results["dskd"],
            time_note="bar 0.80",
            memory_note="bar < 1",
        )


def print_on_policy_figures(results, args):
    """Each on-policy row's sampling cost, its total step time, and that total against the off-policy step."""
    for name, method in ON_POLICY_VARIANTS.items():
        if name not in results:
            continue
        r = results[name]
        total, cpu_total = r["sampling_seconds"] + r["seconds"], r["sampling_cpu_seconds"] + r["cpu_seconds"]
        line = (
            f"\n{name} (lmbda=1, max_new_tokens={args.max_new_tokens}, {r['sampled_tokens']:.0f} tokens sampled per "
            f"response): generation {r['generation_seconds']:.2f} s, sampling with the rebuild "
            f"{r['sampling_seconds']:.2f} s ({r['sampling_cpu_seconds']:.2f} CPU s), training step "
            f"{r['seconds']:.2f} s, total {total:.2f} s ({cpu_total:.2f} CPU s) a step"
        )
        if method in results:
            off = results[method]
            line += (
                f"; off-policy {method} {off['seconds']:.2f} s ({off['cpu_seconds']:.2f} CPU s) a step: on-policy "
                f"total {total / off['seconds']:.2f}x ({cpu_total / off['cpu_seconds']:.2f}x in CPU time)"
            )
        print(line)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return
    methods = args.methods or (DEMO_METHODS if args.pair == "demo" else list(VARIANTS))
    sources = {"current": ROOT}
    if args.reference_src is not None:
        sources["reference"] = args.reference_src.resolve()
    directions = (args.directions or list(DEMO_DIRECTIONS)[:2]) if args.pair == "demo" else [None]
    print(f"load average before: {' '.join(f'{load:.2f}' for load in os.getloadavg())}", flush=True)
    for direction in directions:
        results = {name: {} for name in sources}
        for variant in methods:
            # Reference and current one after the other for each method, so that a change of load hits both.
            for name, source in sources.items():
                started = time.perf_counter()
                result = run_variant(variant, args, source, direction)
                if result is None:
                    continue
                results[name][variant] = result
                print(
                    f"{name} {direction or ''} {variant}: {result['seconds']:.3f} s/step, "
                    f"{result['step_peak_mib']:.0f} MiB step peak, {result['total_peak_mib']:.0f} MiB total peak "
                    f"(done in {time.perf_counter() - started:.0f} s; load {os.getloadavg()[0]:.2f})",
                    file=sys.stderr,
                    flush=True,
                )
        for name, source in sources.items():
            print_table(results[name], args, f"{direction + ', ' if direction else ''}{name} code ({source})")
        if "reference" in results:
            print_comparison(results["reference"], results["current"], direction or "random pair")
    print(f"\nload average after: {' '.join(f'{load:.2f}' for load in os.getloadavg())}")


if __name__ == "__main__":
    main()
