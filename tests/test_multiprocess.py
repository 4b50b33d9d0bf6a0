"""Two training processes (gloo) behave like one process with gradient accumulation 2: under DDP (torchrun),
off-policy, with two teachers and on-policy (`lmbda=1`: the samples are seeded per step and batch position, so both
runs sample the same responses), and under FSDP2 (`accelerate launch` with `recipes/accelerate/fsdp2.yaml`); and
`projector_init: aligned` fits the same projectors over two processes as over one.

The tests build two tiny dropout-free models (the fixture tokenizers, GPT-2 student, Llama teacher) and a small
DSKD-format file, then run this file as a script: `hf_dwakd.scripts.train`'s pipeline in each process, which writes
its rank's projector weights and the logged history. Each launch runs several of these jobs in turn (three launches
in all: one process, torchrun, accelerate), and the tests read what they wrote.
"""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_dwakd.trainer import PROJECTORS_NAME

from testing_utils import load_tokenizer, tiny_causal_lm

COMPONENTS = ["loss", "ce", "kd_student", "kd_teacher", "ce_t2s", "dtw_hidden", "dtw_embed", "grad_norm"]
ON_POLICY_COMPONENTS = [
    "loss",
    "on_policy",
    "sampled_tokens",
    *(f"on_policy_{key}" for key in ("kd_student", "kd_teacher", "ce_t2s", "dtw_hidden", "dtw_embed")),
    "grad_norm",
]
ROWS = [
    ("Name three primary colours.", "Red, yellow and blue."),
    ("What is the capital of France?", "Paris is the capital of France."),
    ("Translate 'thank you' into German.", "Danke."),
    ("Write a haiku about rain.", "Soft rain on the roof\nwhispers to the sleeping town\nuntil the dawn comes"),
    ("Add 17 and 25.", "17 + 25 = 42"),
    ("Give a synonym for 'quick'.", "Fast, or rapid; both work in most sentences."),
    ("Who wrote Hamlet?", "William Shakespeare wrote Hamlet around 1600."),
    ("Say hello in Japanese.", "こんにちは (konnichiwa)."),
]
TIMEOUT_S = 900  # one launch runs several trainings
REPOSITORY = Path(__file__).resolve().parents[1]


TERMS = ["kd_student", "kd_teacher", "ce_t2s", "dtw_hidden", "dtw_embed"]


def write_inputs(folder):
    """Tiny student and teacher folders (weights + tokenizer) and a DSKD-format training file; a second teacher
    (`teacher2`, the SmolLM2 tokenizer) for the run with two teachers."""
    for role, tokenizer_name, family, hidden_size, seed in (
        ("student", "gpt2", "gpt2", 16, 1),
        ("teacher", "llama2", "llama", 24, 2),
        ("teacher2", "smollm2", "gpt2", 20, 3),
    ):
        tokenizer = load_tokenizer(tokenizer_name)
        model = tiny_causal_lm(tokenizer, family=family, hidden_size=hidden_size, seed=seed)
        # Dropout would draw different masks in two processes than in two accumulated micro-batches.
        model.config.update({"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0})
        model.save_pretrained(folder / role)
        tokenizer.save_pretrained(folder / role)
    with open(folder / "train.jsonl", "w", encoding="utf-8") as handle:
        for instruction, output in ROWS:
            prompt = f"### Instruction:\n{instruction}\n\n### Response:\n"
            handle.write(json.dumps({"prompt": prompt, "output": output}) + "\n")


def train_arguments(folder, output_dir, **overrides):
    flags = dict(
        model_name_or_path=folder / "student",
        teacher_model_name_or_path=folder / "teacher",
        dataset_files=f"train={folder / 'train.jsonl'}",
        output_dir=output_dir,
        per_device_train_batch_size=2,
        max_steps=2,
        learning_rate=1e-2,
        projector_learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu="true",
        bf16="false",
        max_length=64,
        max_prompt_length=32,
        dtw_backend="reference",
        dataloader_num_workers=0,
        disable_tqdm="true",
        seed=0,
        # Padded forwards throughout: each process runs its first batch padded (the checks) and later ones unpadded,
        # and the two runs do not place the same batches first, which would differ by rounding that Adam amplifies.
        unpadded_forward="false",
    )
    flags.update(overrides)
    values = {key: value if isinstance(value, list) else [value] for key, value in flags.items()}
    return [item for key, value in values.items() for item in (f"--{key}", *map(str, value))]


def run(command, jobs, jobs_file):
    """Launch this file as a script that runs `jobs` one after the other in each process: one launch (the
    interpreters importing torch, transformers and TRL) serves several checks."""
    jobs_file.write_text(json.dumps(jobs))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), env.get("PYTHONPATH")]))  # this checkout
    script = str(Path(__file__).resolve())
    result = subprocess.run(
        [*command, script, str(jobs_file)], env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def history(output_dir, suffix=""):
    return json.loads((output_dir / f"log_history{suffix}.json").read_text())


# The teachers of each DDP run (its flags: `run_overrides`; what must match: `logged_components`). Every process runs
# the same runs in the same order; each trainer seeds itself, so a run does not depend on the ones before it.
TEACHERS = {"one_teacher": ["teacher"], "two_teachers": ["teacher", "teacher2"], "on_policy": ["teacher"]}
FSDP2_STEPS = dict(max_steps=3, save_strategy="steps", save_steps=2)


def run_overrides(folder, name):
    overrides = dict(teacher_model_name_or_path=[folder / teacher for teacher in TEACHERS[name]])
    if name == "two_teachers":
        overrides["teacher_weights"] = [3, 1]
    if name == "on_policy":
        overrides.update(lmbda=1.0, max_new_tokens=8)
    return overrides


def logged_components(name):
    if name == "two_teachers":  # every teacher's terms, under its name
        return ["loss", "ce", "grad_norm", *(f"{teacher}/{term}" for teacher in TEACHERS[name] for term in TERMS)]
    return ON_POLICY_COMPONENTS if name == "on_policy" else COMPONENTS


def ddp_jobs(folder, root, **flags):
    """The three training runs, then the aligned projector fit (no training), each in its folder under `root`."""
    jobs = [
        {"argv": train_arguments(folder, root / name, **run_overrides(folder, name), **flags)} for name in TEACHERS
    ]
    fit_flags = {key: value for key, value in flags.items() if key != "gradient_accumulation_steps"}
    jobs.append({"argv": train_arguments(folder, root / "fit", projector_init="aligned", **fit_flags), "fit": True})
    return jobs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    write_inputs(folder)
    return folder


@pytest.fixture(scope="module")
def one_process(inputs):
    """One process, accumulation 2 for the training runs: the DDP runs and the FSDP2 run's reference."""
    root = inputs / "one_process"
    jobs = ddp_jobs(inputs, root, gradient_accumulation_steps=2)
    fsdp2_reference = train_arguments(inputs, root / "fsdp2", gradient_accumulation_steps=2, **FSDP2_STEPS)
    run([sys.executable], [*jobs, {"argv": fsdp2_reference}], inputs / "one_process.json")
    return root


@pytest.fixture(scope="module")
def two_processes(inputs):
    """Two processes under torchrun (gloo), accumulation 1."""
    root = inputs / "two_processes"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    run(torchrun, ddp_jobs(inputs, root, ddp_backend="gloo"), inputs / "two_processes.json")
    return root


@pytest.fixture(scope="module")
def fsdp2(inputs):
    """Two CPU processes under `accelerate launch` with the FSDP2 recipe; the run then resumes from checkpoint-2."""
    output_dir = inputs / "fsdp2"
    launch = [
        *[sys.executable, "-m", "accelerate.commands.launch", "--config_file"],
        *[str(REPOSITORY / "recipes" / "accelerate" / "fsdp2.yaml"), "--num_processes", "2"],
        *["--mixed_precision", "no", "--main_process_port", "0"],
    ]
    job = {"argv": train_arguments(inputs, output_dir, **FSDP2_STEPS), "then_resume_from": "checkpoint-2"}
    run(launch, [job], inputs / "fsdp2.json")
    return output_dir


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TEACHERS))
def test_two_processes_log_and_update_like_one_process_with_accumulation(one_process, two_processes, name):
    two, one = two_processes / name, one_process / name
    two_history, one_history = history(two), history(one)
    assert two_history[0]["world_size"] == 2 and one_history[0]["world_size"] == 1
    two_logs = [entry for entry in two_history if "loss" in entry]
    one_logs = [entry for entry in one_history if "loss" in entry]
    assert len(two_logs) == len(one_logs) == 2
    for key in logged_components(name):
        assert [e[key] for e in two_logs] == pytest.approx([e[key] for e in one_logs], rel=1e-5, abs=1e-7), key

    rank0, rank1 = (load_file(two / f"projectors_rank{rank}.safetensors") for rank in (0, 1))
    single = load_file(one / "projectors_rank0.safetensors")
    initial = load_file(one / "projectors_initial.safetensors")
    for key, value in rank0.items():
        assert torch.equal(value, rank1[key]), key
        torch.testing.assert_close(value, single[key], rtol=1e-5, atol=1e-7)
        assert not torch.equal(value, initial[key]), key  # the projectors did train


@pytest.mark.slow
def test_two_processes_fit_the_same_projectors_as_one(one_process, two_processes):
    """`projector_init: aligned` fits over both processes' rows what one process fits over all of them."""
    two, one = two_processes / "fit", one_process / "fit"
    fit_two, fit_one = (json.loads((folder / "fit.json").read_text()) for folder in (two, one))
    assert fit_two == fit_one  # rows, pairs and the query scale, over both processes
    rank0, rank1 = (load_file(two / f"projectors_rank{rank}.safetensors") for rank in (0, 1))
    single = load_file(one / "projectors_rank0.safetensors")
    for key, value in single.items():
        assert torch.equal(rank0[key], rank1[key]), key
        torch.testing.assert_close(rank0[key], value, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_fsdp2_shards_both_models_and_trains_like_one_process_with_accumulation(one_process, fsdp2):
    """Two CPU processes launched by `accelerate launch --config_file recipes/accelerate/fsdp2.yaml` (mixed
    precision off, which a CPU comparison needs), against one process with accumulation 2.

    accelerate enables FSDP for GPU-like devices only: on CPU it turns the launch into plain multi-CPU data
    parallelism. The worker keeps the FSDP plugin that the recipe's environment built (`allow_fsdp_on_cpu`), so
    from the `Accelerator` on the run takes the trainer's FSDP2 path: accelerate's `fully_shard` of the student
    per decoder layer, the trainer's sharding of the teacher, FSDP's full-state-dict checkpoints. The run saves a
    checkpoint at step 2 and the worker then resumes a new trainer from it, which restores the projectors.
    """
    two, one = fsdp2, one_process / "fsdp2"
    two_history, one_history = history(two), history(one)

    sharding = json.loads((two / "sharding.json").read_text())
    assert sharding["student"]["decoder_layers"] == sharding["teacher"]["decoder_layers"] == 1
    for role in ("student", "teacher"):
        # Every parameter is split between the two processes: each holds part of it.
        assert sharding[role]["parameters"] > 0 and sharding[role]["whole_on_a_rank"] == 0, (role, sharding[role])
    assert two_history[0]["world_size"] == 2
    two_logs = [entry for entry in two_history if "loss" in entry]
    one_logs = [entry for entry in one_history if "loss" in entry]
    assert len(two_logs) == len(one_logs) == 3
    for key in COMPONENTS:
        assert [e[key] for e in two_logs] == pytest.approx([e[key] for e in one_logs], rel=1e-5, abs=1e-7), key

    single = load_file(one / "projectors_rank0.safetensors")
    saved = load_file(two / "checkpoint-2" / PROJECTORS_NAME)
    single_saved = load_file(one / "checkpoint-2" / PROJECTORS_NAME)
    resumed_logs = [entry for entry in history(two, "_resumed") if "loss" in entry]
    assert [entry["step"] for entry in resumed_logs] == [1, 2, 3]  # the checkpoint's history, then step 3
    assert resumed_logs[2]["loss"] == pytest.approx(two_logs[2]["loss"], rel=1e-5, abs=1e-7)
    for rank in (0, 1):
        trained = load_file(two / f"projectors_rank{rank}.safetensors")
        resumed = load_file(two / f"projectors_resumed_rank{rank}.safetensors")
        for name, value in single.items():
            torch.testing.assert_close(trained[name], value, rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(resumed[name], value, rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(saved[name], single_saved[name], rtol=1e-5, atol=1e-7)


def allow_fsdp_on_cpu():
    """Keep the FSDP plugin that `accelerate launch` configured when the processes run on CPU.

    `AcceleratorState` turns FSDP on only for GPU-like distributed types; with `cpu=True` it settles on
    `MULTI_CPU` and drops the plugin. FSDP2 itself runs on CPU over gloo, so this re-enables it there.
    """
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original_init = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin

    AcceleratorState.__init__ = init


def worker(jobs_file):
    """Run each job of `jobs_file` in turn: train with the CLI's pipeline and write this rank's projectors, and the
    log history from rank 0; a `fit` job only starts the projectors and writes the fit.

    `then_resume_from: CHECKPOINT`: then resume a new trainer from that checkpoint of the run and write its
    projectors and log history too.
    """
    if os.environ.get("ACCELERATE_USE_FSDP") == "true":
        allow_fsdp_on_cpu()
    for job in json.loads(Path(jobs_file).read_text()):
        (fit_projectors if job.get("fit") else train)(job["argv"], job.get("then_resume_from"))
    # Left alive to interpreter exit, the process group's threads can abort the process (SIGABRT) after the work
    # is done, which the launch reports as a failure.
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def train(argv, resume_from):
    from hf_dwakd.scripts.train import build_trainer, load_train_datasets, parse_train_arguments

    script_args, training_args, model_args = parse_train_arguments(argv)
    datasets = load_train_datasets(script_args, training_args)
    trainer = build_trainer(training_args, model_args, datasets)
    output_dir = Path(training_args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rank = trainer.accelerator.process_index
    if rank == 0:
        save_file(_state(trainer), output_dir / "projectors_initial.safetensors")
    trainer.train()
    _write_results(trainer, output_dir, "")
    if trainer.is_fsdp_enabled and rank == 0:
        sharding = {"student": _sharding(trainer.model), "teacher": _sharding(trainer.teacher_model)}
        (output_dir / "sharding.json").write_text(json.dumps(sharding))
    if resume_from is not None:
        resumed = build_trainer(training_args, model_args, datasets)
        resumed.train(resume_from_checkpoint=str(output_dir / resume_from))
        _write_results(resumed, output_dir, "_resumed")
    trainer.accelerator.wait_for_everyone()


def fit_projectors(argv, resume_from=None):
    """Build the CLI's trainer and start its projectors; write this rank's projectors and, from rank 0, the fit."""
    from hf_dwakd.scripts.train import build_trainer, load_train_datasets, parse_train_arguments

    script_args, training_args, model_args = parse_train_arguments(argv)
    trainer = build_trainer(training_args, model_args, load_train_datasets(script_args, training_args))
    (fit,) = trainer.start_projectors().values()
    output_dir = Path(training_args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_file(_state(trainer), output_dir / f"projectors_rank{trainer.accelerator.process_index}.safetensors")
    if trainer.accelerator.process_index == 0:
        (output_dir / "fit.json").write_text(json.dumps(dataclasses.asdict(fit)))
    trainer.accelerator.wait_for_everyone()


def _write_results(trainer, output_dir, suffix):
    rank = trainer.accelerator.process_index
    save_file(_state(trainer), output_dir / f"projectors{suffix}_rank{rank}.safetensors")
    if rank == 0:
        history = [{"world_size": trainer.accelerator.num_processes}, *trainer.state.log_history]
        (output_dir / f"log_history{suffix}.json").write_text(json.dumps(history))


def _sharding(model):
    """How a prepared model is split: its decoder layers that are FSDP2 units, and its parameters held whole on
    this rank."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    parameters = [p for name, p in model.named_parameters() if "dwakd_projectors" not in name]
    layer_classes = set(model._no_split_modules)
    return {
        "decoder_layers": sum(
            isinstance(m, FSDPModule) and any(base.__name__ in layer_classes for base in type(m).__mro__)
            for m in model.modules()
        ),
        "parameters": len(parameters),
        "whole_on_a_rank": sum(not isinstance(p, DTensor) or p.to_local().numel() == p.numel() for p in parameters),
    }


def _state(trainer):
    """The projectors' full weights (gathered from every rank under FSDP2)."""
    from torch.distributed.tensor import DTensor

    state = trainer.projectors.state_dict()
    state = {name: value.full_tensor() if isinstance(value, DTensor) else value for name, value in state.items()}
    return {name: value.detach().cpu().contiguous() for name, value in state.items()}


if __name__ == "__main__":
    worker(sys.argv[1])
