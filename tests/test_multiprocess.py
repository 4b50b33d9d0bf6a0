"""Two training processes (torchrun, gloo) behave like one process with gradient accumulation 2, off-policy and
on-policy (`lmbda=1`: the samples are seeded per step and batch position, so both runs sample the same responses).

The test builds two tiny dropout-free models (the fixture tokenizers, GPT-2 student, Llama teacher) and a small
DSKD-format file, then runs this file as a script: `hf_dwakd.scripts.train`'s pipeline in each process, which writes
its rank's projector weights and the logged history.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

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
TIMEOUT_S = 240
REPOSITORY = Path(__file__).resolve().parents[1]


def write_inputs(folder):
    """Tiny student and teacher folders (weights + tokenizer) and a DSKD-format training file."""
    for role, tokenizer_name, family, hidden_size, seed in (
        ("student", "gpt2", "gpt2", 16, 1),
        ("teacher", "llama2", "llama", 24, 2),
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
    return [item for key, value in flags.items() for item in (f"--{key}", str(value))]


def run(command, output_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), env.get("PYTHONPATH")]))  # this checkout
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((output_dir / "log_history.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, components",
    [({}, COMPONENTS), ({"lmbda": 1.0, "max_new_tokens": 8}, ON_POLICY_COMPONENTS)],
    ids=["off_policy", "on_policy"],
)
def test_two_processes_log_and_update_like_one_process_with_accumulation(tmp_path, overrides, components):
    write_inputs(tmp_path)
    script = str(Path(__file__).resolve())
    two = tmp_path / "two_processes"
    one = tmp_path / "one_process"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    two_arguments = train_arguments(tmp_path, two, ddp_backend="gloo", **overrides)
    one_arguments = train_arguments(tmp_path, one, gradient_accumulation_steps=2, **overrides)
    two_history = run([*torchrun, script, *two_arguments], two)
    one_history = run([sys.executable, script, *one_arguments], one)

    assert two_history[0]["world_size"] == 2 and one_history[0]["world_size"] == 1
    two_logs = [entry for entry in two_history if "loss" in entry]
    one_logs = [entry for entry in one_history if "loss" in entry]
    assert len(two_logs) == len(one_logs) == 2
    for key in components:
        assert [e[key] for e in two_logs] == pytest.approx([e[key] for e in one_logs], rel=1e-5, abs=1e-7), key

    rank0, rank1 = (load_file(two / f"projectors_rank{rank}.safetensors") for rank in (0, 1))
    single = load_file(one / "projectors_rank0.safetensors")
    initial = load_file(one / "projectors_initial.safetensors")
    for name, value in rank0.items():
        assert torch.equal(value, rank1[name]), name
        torch.testing.assert_close(value, single[name], rtol=1e-5, atol=1e-7)
        assert not torch.equal(value, initial[name]), name  # the projectors did train


def worker(argv):
    """Train with the CLI's pipeline; write this rank's projectors, and the log history from rank 0."""
    from hf_dwakd.scripts.train import build_trainer, load_train_datasets, parse_train_arguments

    script_args, training_args, model_args = parse_train_arguments(argv)
    trainer = build_trainer(training_args, model_args, load_train_datasets(script_args, training_args))
    output_dir = Path(training_args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rank = trainer.accelerator.process_index
    if rank == 0:
        save_file(_state(trainer), output_dir / "projectors_initial.safetensors")
    trainer.train()
    save_file(_state(trainer), output_dir / f"projectors_rank{rank}.safetensors")
    if rank == 0:
        history = [{"world_size": trainer.accelerator.num_processes}, *trainer.state.log_history]
        (output_dir / "log_history.json").write_text(json.dumps(history))
    trainer.accelerator.wait_for_everyone()


def _state(trainer):
    return {name: value.detach().cpu().contiguous() for name, value in trainer.projectors.state_dict().items()}


if __name__ == "__main__":
    worker(sys.argv[1:])
