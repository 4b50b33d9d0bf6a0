"""Step-0 quality of the projectors per `projector_init`, on the CPU demo's two real models, and the fit's cost.

Run: nice -n 10 python benchmarks/projector_init.py [--inits random aligned pseudo_inverse] [--rows 200]
     [--eval_rows 32] [--steps 0] [--max_length 256] [--student gemma-3-270m] [--teacher smollm2-135m-instruct]

The trainer is built as the demo builds it (recipes/demo_cpu.yaml: LoRA r8 on every linear layer of the student,
max_length 256, batch 4, dwakd), with `projector_init` set and `projector_init_rows` = `--rows` of the demo's 200
training rows. On the demo's held-out Dolly rows (`--eval_rows` of 32, never fitted on), with the models frozen
and in eval mode, it reports per init:

- `t2s_acc`, `s2t_acc`, `ce_t2s`: the objective's own metrics (token means over all held-out rows);
- `entropy`: the mean entropy (nats) of the attention rows a_t2s, and `uniform`, that of a uniform row over
  the same teacher positions;
- `overlap_mass`: the mean attention mass a student row puts on the teacher positions whose targets overlap its
  target's characters (rows with an overlap only);
- `fit_s` / `fit_cpu_s`: wall and CPU seconds (the process's, all threads) of `start_projectors`;
- once, with the last init: `step_s` / `step_cpu_s`, the same for the second training step (the trainer's own
  step, between `on_step_begin` and `on_step_end`); CPU seconds compare fairly on a shared machine.

`--steps N` (N >= 2) trains N steps from each start and reports the same figures after them.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from hf_dwakd import DWAKDConfig, DWAKDTrainer
from hf_dwakd.demo.models import demo_model_path
from hf_dwakd.demo.run import HELDOUT_FILE, TRAIN_FILE
from hf_dwakd.evaluation.benchmarks import read_jsonl
from hf_dwakd.methods import distillation_loss
from hf_dwakd.objective import cross_model_attention, gather_responses
from hf_dwakd.projector_init import TokenBytes, position_overlaps


class StepTimer(TrainerCallback):
    def __init__(self):
        self.seconds = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.started = (time.perf_counter(), time.process_time())

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append((time.perf_counter() - self.started[0], time.process_time() - self.started[1]))


def build_trainer(options, init, output_dir):
    student_path, teacher_path = demo_model_path(options.student), demo_model_path(options.teacher)
    transformers.set_seed(42)
    args = DWAKDConfig(
        output_dir=str(output_dir),
        kd_method="dwakd",
        max_length=options.max_length,
        max_prompt_length=options.max_length * 3 // 4,
        per_device_train_batch_size=4,
        learning_rate=5e-4,
        projector_learning_rate=1e-3,
        lr_scheduler_type="cosine",
        warmup_steps=5,
        max_steps=max(options.steps, 2),
        bf16=False,
        use_cpu=True,
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        seed=42,
        disable_tqdm=True,
        projector_init=init,
        projector_init_rows=options.rows,
    )
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    return DWAKDTrainer(
        AutoModelForCausalLM.from_pretrained(student_path),
        teacher_model=AutoModelForCausalLM.from_pretrained(teacher_path),
        args=args,
        train_dataset=Dataset.from_list(read_jsonl(TRAIN_FILE)[: options.rows]),
        processing_class=AutoTokenizer.from_pretrained(student_path),
        teacher_processing_class=AutoTokenizer.from_pretrained(teacher_path),
        peft_config=lora,
    )


@torch.no_grad()
def held_out_figures(trainer, rows):
    """The step-0 figures of the module docstring on `rows`, models frozen in eval mode."""
    from hf_dwakd.data import prepare_distillation_dataset

    prepared = prepare_distillation_dataset(
        Dataset.from_list(rows),
        trainer.processing_class,
        trainer.teacher_processing_class,
        trainer.args.max_length,
        trainer.args.max_prompt_length,
    )
    student_bytes = TokenBytes.from_tokenizer(trainer.processing_class)
    teacher_bytes = TokenBytes.from_tokenizer(trainer.teacher_processing_class)
    sums = dict(t2s_correct=0.0, s2t_correct=0.0, ce_t2s=0.0, students=0, teachers=0)
    entropies, uniform, masses = [], [], []
    was_training = trainer.model.training
    trainer.model.eval()
    for start in range(0, len(prepared), 4):
        batch = trainer._prepare_inputs(
            trainer.data_collator([prepared[i] for i in range(start, min(start + 4, len(prepared)))])
        )
        student, _ = trainer.student_side(batch, trainer.model)
        teacher, _ = trainer.teachers[0].side(batch)
        _, metrics = distillation_loss(trainer.args, student, teacher, None, projectors=trainer.projectors)
        student_responses, teacher_responses = gather_responses(student), gather_responses(teacher)
        n_tokens, m_tokens = int(student_responses.lengths.sum()), int(teacher_responses.lengths.sum())
        sums["t2s_correct"] += float(metrics["t2s_acc"]) * n_tokens
        sums["s2t_correct"] += float(metrics["s2t_acc"]) * m_tokens
        sums["ce_t2s"] += float(metrics["ce_t2s"]) * n_tokens  # a token sum over the batch's own count
        sums["students"] += n_tokens
        sums["teachers"] += m_tokens
        attention = cross_model_attention(student_responses, teacher_responses, trainer.projectors).t2s_attention
        overlaps = position_overlaps(student_responses, teacher_responses, student_bytes, teacher_bytes)
        for index, overlap in enumerate(overlaps):
            n, m = overlap.shape
            rows_attention = attention[index, :n, :m].double()
            entropies += torch.special.entr(rows_attention).sum(dim=-1).tolist()
            uniform += [float(torch.log(torch.tensor(float(m))))] * n
            paired = overlap.sum(dim=1) > 0
            masses += (rows_attention[paired] * (overlap[paired] > 0)).sum(dim=-1).tolist()
    trainer.model.train(was_training)
    return {
        "t2s_acc": sums["t2s_correct"] / sums["students"],
        "s2t_acc": sums["s2t_correct"] / sums["teachers"],
        "ce_t2s": sums["ce_t2s"] / sums["students"],
        "entropy": statistics.fmean(entropies),
        "uniform": statistics.fmean(uniform),
        "overlap_mass": statistics.fmean(masses),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inits", nargs="+", default=["random", "aligned", "pseudo_inverse"])
    parser.add_argument("--rows", type=int, default=200, help="training rows fitted on (projector_init_rows)")
    parser.add_argument("--eval_rows", type=int, default=32, help="held-out rows measured")
    parser.add_argument("--steps", type=int, default=0, help="also measure after this many training steps")
    parser.add_argument("--max_length", type=int, default=256, help="tokens per row (the prompt gets 3/4 of it)")
    parser.add_argument("--student", default="gemma-3-270m")
    parser.add_argument("--teacher", default="smollm2-135m-instruct")
    options = parser.parse_args(argv)
    heldout = read_jsonl(HELDOUT_FILE)[: options.eval_rows]
    print(f"torch threads {torch.get_num_threads()}; student {options.student}, teacher {options.teacher}; {options}")
    results = {}
    for position, init in enumerate(options.inits):
        with tempfile.TemporaryDirectory() as output_dir:
            trainer = build_trainer(options, init, Path(output_dir))
            started = (time.perf_counter(), time.process_time())
            fit = trainer.start_projectors()
            figures = {
                "fit_s": time.perf_counter() - started[0],
                "fit_cpu_s": time.process_time() - started[1],
                "fit": str(fit),
                **held_out_figures(trainer, heldout),
            }
            print(init, json.dumps(figures), flush=True)
            if options.steps or position == len(options.inits) - 1:
                timer = StepTimer()
                trainer.add_callback(timer)
                trainer.train()
                figures["step_s"], figures["step_cpu_s"] = timer.seconds[1]
            if options.steps:
                figures["after_steps"] = trainer.state.global_step
                figures["after"] = held_out_figures(trainer, heldout)
        results[init] = figures
        print(init, json.dumps(figures), flush=True)
    json.dump(results, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
