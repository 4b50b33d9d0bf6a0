"""The teacher cache: built once from a saved teacher, it trains exactly like the live teacher."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset, load_from_disk
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from hf_dwakd import DWAKDTrainer
from hf_dwakd.data import DistillationCollator, prepare_distillation_dataset
from hf_dwakd.teacher_cache import build_teacher_cache, load_light_teacher, shard_range

from testing_utils import (
    BASELINE_OPTIONS,
    ROWS,
    make_config,
    method_options,
    save_tiny_model,
    shared_tokenizers,
    tiny_causal_lm,
    write_cpu_recipe,
    write_dskd_file,
)

METHODS = sorted(["dwakd", *BASELINE_OPTIONS])
EVAL_ROWS = ROWS[:3]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A saved tiny Llama teacher (with the Llama-2 tokenizer) and a saved tiny student (GPT-2 tokenizer)."""
    root = tmp_path_factory.mktemp("models")
    for role, tokenizer_name, hidden_size, seed in (("student", "gpt2", 16, 1), ("teacher", "llama2", 24, 2)):
        save_tiny_model(root / role, tokenizer_name, hidden_size=hidden_size, seed=seed)
    return root


def config(tmp_path, folders, **overrides):
    return make_config(tmp_path, **{"teacher_model_name_or_path": str(folders / "teacher"), **overrides})


def build(tmp_path, folders, rows=ROWS, eval_rows=EVAL_ROWS, **overrides):
    args = config(tmp_path, folders, teacher_cache_dir=str(tmp_path / "cache"), **overrides)
    eval_dataset = Dataset.from_list(eval_rows) if eval_rows else None
    return build_teacher_cache(
        args, Dataset.from_list(rows), eval_dataset, student_tokenizer=shared_tokenizers()[0]
    )


class RecordingTrainer(DWAKDTrainer):
    """Keeps every training step's loss and the gradients of the student and projectors before each update."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.losses, self.gradients = [], []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.model.training:
            self.losses.append(loss.detach().clone())
        return loss

    def optimizer_step_gradients(self):
        return {name: p.grad.clone() for name, p in self.model.named_parameters() if p.grad is not None}


def trainer(tmp_path, folders, rows=ROWS, cls=RecordingTrainer, **overrides):
    student = AutoModelForCausalLM.from_pretrained(folders / "student")
    return cls(
        model=student,
        args=config(tmp_path, folders, **overrides),
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(EVAL_ROWS),
        processing_class=shared_tokenizers()[0],
    )


def train_recording_gradients(run):
    """Train, recording the gradients just before every optimizer step."""
    from transformers import TrainerCallback

    class Gradients(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            run.gradients.append(run.optimizer_step_gradients())

    run.add_callback(Gradients())
    run.train()
    return run


def relative_difference(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30)).item()


@pytest.mark.parametrize("method", METHODS)
def test_float32_cache_trains_like_the_live_teacher(tmp_path, folders, mined_cache, method):
    options = method_options(method, mined_cache)
    build(tmp_path, folders, kd_method=method, **options)
    live = train_recording_gradients(trainer(tmp_path / "live", folders, kd_method=method, **options))
    cached = train_recording_gradients(
        trainer(tmp_path / "cached", folders, kd_method=method, teacher_cache_dir=str(tmp_path / "cache"), **options)
    )
    assert cached.teacher_model is None and cached.cached_teacher is not None
    assert len(cached.losses) == len(live.losses) == 3 and len(cached.gradients) == 3
    for cached_loss, live_loss in zip(cached.losses, live.losses):
        assert relative_difference(cached_loss, live_loss) <= 1e-6
    # The gradient of all trained parameters together: the first training run of a process differs from later
    # ones (live or cached alike) by up to ~1e-5 in single small tensors, while later runs agree bit for bit.
    for cached_step, live_step in zip(cached.gradients, live.gradients):
        assert set(cached_step) == set(live_step) and cached_step
        flat_cached = torch.cat([cached_step[name].flatten() for name in live_step])
        assert relative_difference(flat_cached, torch.cat([g.flatten() for g in live_step.values()])) <= 1e-6
    # The evaluation loss reads the eval split of the cache.
    assert cached.evaluate()["eval_loss"] == pytest.approx(live.evaluate()["eval_loss"], rel=1e-6)


def test_bfloat16_cache_stays_close_to_the_live_teacher(tmp_path, folders):
    build(tmp_path, folders, teacher_cache_dtype="bfloat16")
    stored = load_from_disk(str(tmp_path / "cache" / "train")).with_format("numpy", dtype=None)
    assert stored[0]["teacher_hidden"].dtype == np.uint16  # bfloat16 bit patterns
    live = trainer(tmp_path / "live", folders)
    cached = trainer(tmp_path / "cached", folders, teacher_cache_dir=str(tmp_path / "cache"))
    live.train()
    cached.train()
    differences = [relative_difference(c, ref) for c, ref in zip(cached.losses, live.losses)]
    print(f"bfloat16 cache: relative loss differences over 3 steps {differences}")
    assert max(differences) < 1e-2


def test_cache_stores_response_states_and_metadata(tmp_path, folders):
    path = build(tmp_path, folders)
    metadata = json.loads((path / "metadata.json").read_text())
    for key in ("teacher_name_or_path", "teacher_config", "teacher_tokenizer", "package_version", "dtype"):
        assert metadata[key]
    assert (metadata["max_length"], metadata["max_prompt_length"]) == (64, 32)
    assert sorted(metadata["splits"]) == ["eval", "train"]

    teacher_tokenizer = shared_tokenizers()[1]
    prepared = prepare_distillation_dataset(Dataset.from_list(ROWS), shared_tokenizers()[0], teacher_tokenizer, 64, 32)
    stored = load_from_disk(str(path / "train")).with_format("numpy", dtype=None)
    teacher = AutoModelForCausalLM.from_pretrained(folders / "teacher").eval()
    for row, states in zip(prepared, stored["teacher_hidden"]):
        labels = torch.tensor(row["teacher_labels"])
        with torch.no_grad():
            hidden = teacher(torch.tensor([row["teacher_input_ids"]]), output_hidden_states=True).hidden_states[-1]
        expected = hidden[0, :-1][labels[1:] != -100]
        assert states.dtype == np.float32 and states.shape == tuple(expected.shape)
        torch.testing.assert_close(torch.from_numpy(states), expected, rtol=1e-5, atol=1e-6)


def test_building_the_same_cache_twice_reuses_it(tmp_path, folders, monkeypatch):
    path = build(tmp_path, folders)
    written = (path / "metadata.json").stat().st_mtime_ns

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher was loaded again")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_teacher)
    assert build(tmp_path, folders) == path
    assert (path / "metadata.json").stat().st_mtime_ns == written
    with pytest.raises(ValueError, match="max_length"):
        build(tmp_path, folders, max_length=48)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(max_length=48), "max_length"),
        (dict(max_prompt_length=16), "max_prompt_length"),
        (dict(rows=ROWS[1:]), "other 'train' data"),
        (dict(rows=ROWS[::-1]), "other 'train' data"),
        (dict(teacher="other"), "teacher_name_or_path"),
    ],
)
def test_a_stale_cache_is_refused_before_training(tmp_path, folders, change, message, monkeypatch):
    build(tmp_path, folders)
    change = dict(change)
    if change.pop("teacher", None):
        other = tmp_path / "other-teacher"
        save_tiny_model(other, "llama2", hidden_size=24, seed=5)
        change["teacher_model_name_or_path"] = str(other)
    rows = change.pop("rows", ROWS)
    loaded = []
    real_from_pretrained = AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(
        AutoModelForCausalLM, "from_pretrained", lambda *a, **k: loaded.append(a) or real_from_pretrained(*a, **k)
    )
    args = config(tmp_path / "run", folders, teacher_cache_dir=str(tmp_path / "cache"), **change)
    with pytest.raises(ValueError, match=message):
        DWAKDTrainer(
            model=str(folders / "student"),
            args=args,
            train_dataset=Dataset.from_list(rows),
            eval_dataset=Dataset.from_list(EVAL_ROWS),
        )
    assert not loaded  # refused before loading any model


def test_a_missing_cache_split_is_refused(tmp_path, folders):
    build(tmp_path, folders, eval_rows=None)
    with pytest.raises(ValueError, match="holds no 'eval' split"):
        trainer(tmp_path / "run", folders, teacher_cache_dir=str(tmp_path / "cache"))


def test_resume_with_a_cache_equals_an_uninterrupted_run(tmp_path, folders):
    build(tmp_path, folders)
    common = dict(teacher_cache_dir=str(tmp_path / "cache"), max_steps=4, save_strategy="steps", save_steps=2)
    straight = trainer(tmp_path / "straight", folders, **common)
    straight.train()
    resumed = trainer(tmp_path / "resumed", folders, **common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "straight" / "out" / "checkpoint-2"))
    assert len(resumed.losses) == 2
    torch.testing.assert_close(torch.stack(resumed.losses), torch.stack(straight.losses[2:]), rtol=1e-6, atol=0)
    final = dict(straight.model.named_parameters())
    for name, value in resumed.model.named_parameters():
        torch.testing.assert_close(value, final[name], rtol=1e-6, atol=1e-7)


def test_a_soft_capping_teacher_is_refused_at_build(tmp_path, folders):
    tokenizer = shared_tokenizers()[1]
    capped = tiny_causal_lm(tokenizer, family="gemma3", final_logit_softcapping=0.5)
    capped.save_pretrained(tmp_path / "capped")
    tokenizer.save_pretrained(tmp_path / "capped")
    with pytest.raises(ValueError, match=r"capped.*final_logit_softcapping=0.5.*train with the live teacher"):
        build(tmp_path, folders, teacher_model_name_or_path=str(tmp_path / "capped"))
    assert not (tmp_path / "cache" / "metadata.json").exists()


def test_light_teacher_reads_only_the_embedding_and_output_layers(tmp_path):
    tokenizer = shared_tokenizers()[1]
    for tied in (False, True):
        model = tiny_causal_lm(tokenizer, hidden_size=24, num_layers=2, seed=3)
        if tied:
            model.config.tie_word_embeddings = True
            model.tie_weights()
        folder = tmp_path / f"tied-{tied}"
        model.save_pretrained(folder)
        light = load_light_teacher(str(folder))
        names = {name for name, _ in light.named_parameters()}
        assert names == ({"input_embeddings.weight"} | (set() if tied else {"output_layer.weight"}))
        assert torch.equal(light.input_embeddings.weight, model.get_input_embeddings().weight)
        assert torch.equal(light.output_layer.weight, model.get_output_embeddings().weight)
        assert light.hidden_size == 24
    with safe_open(folder / "model.safetensors", "pt") as handle:  # the checkpoint does hold decoder layers
        assert any(".layers.1." in key for key in handle.keys())


def test_shards_cover_every_row_once_in_order():
    for num_rows in (0, 1, 7, 10, 1001):
        for num_shards in (1, 2, 3, 8):
            ranges = [shard_range(num_rows, num_shards, index) for index in range(num_shards)]
            assert [row for start, end in ranges for row in range(start, end)] == list(range(num_rows))
            sizes = [end - start for start, end in ranges]
            assert max(sizes) - min(sizes) <= 1


def test_collator_pads_cached_states():
    collator = DistillationCollator(0, 0)
    rows = [
        {**{f"{p}{c}": [1, 2] for p in ("", "teacher_") for c in ("input_ids", "attention_mask", "labels")}}
        for _ in range(2)
    ]
    rows[0]["teacher_hidden"] = np.arange(6, dtype=np.uint16).reshape(3, 2)
    rows[1]["teacher_hidden"] = np.arange(2, dtype=np.uint16).reshape(1, 2)
    padded = collator(rows)["teacher_hidden"]
    assert padded.dtype == torch.uint16 and padded.shape == (2, 3, 2)
    assert padded[0].tolist() == [[0, 1], [2, 3], [4, 5]] and padded[1].tolist() == [[0, 1], [0, 0], [0, 0]]


def test_cache_teacher_command_builds_what_train_reads(tmp_path, folders):
    from hf_dwakd import cli
    from hf_dwakd.scripts import train as train_script

    argv = write_cpu_recipe(
        tmp_path,
        model_name_or_path=str(folders / "student"),
        teacher_model_name_or_path=str(folders / "teacher"),
        teacher_cache_dir=str(tmp_path / "cache"),
    )
    cli.main(["cache-teacher", *argv, "--teacher_cache_dtype", "float16"])
    metadata = json.loads((tmp_path / "cache" / "metadata.json").read_text())
    assert metadata["dtype"] == "float16" and list(metadata["splits"]) == ["train"]
    assert metadata["splits"]["train"]["rows"] == len(ROWS)

    script_args, training_args, model_args = train_script.parse_train_arguments(argv)
    datasets = train_script.load_train_datasets(script_args, training_args)
    run = train_script.build_trainer(training_args, model_args, datasets)
    assert run.teacher_model is None and run.cached_teacher is not None
    assert run.train_dataset[0]["teacher_hidden"].dtype == np.float16


def test_cache_teacher_command_needs_the_folder(tmp_path, folders, capsys):
    from hf_dwakd import cli

    with pytest.raises(SystemExit):
        cli.main(["cache-teacher", "--model_name_or_path", str(folders / "student"),
                  "--teacher_model_name_or_path", str(folders / "teacher"), "--dataset_name", str(tmp_path),
                  "--use_cpu", "true", "--bf16", "false"])
    assert "`teacher_cache_dir`" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_build_the_same_cache_as_one(tmp_path, folders):
    write_dskd_file(tmp_path / "train.jsonl", ROWS[:7])
    flags = [
        "--model_name_or_path", str(folders / "student"), "--teacher_model_name_or_path", str(folders / "teacher"),
        "--dataset_files", f"train={tmp_path / 'train.jsonl'}", "--output_dir", str(tmp_path / "out"),
        "--max_length", "64", "--max_prompt_length", "32", "--use_cpu", "true", "--bf16", "false",
        "--report_to", "none", "--per_device_eval_batch_size", "2",
    ]
    repository = str(Path(__file__).resolve().parents[1])
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": repository}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    for name, launcher in (("two", [*torchrun, "-m"]), ("one", [sys.executable, "-m"])):
        command = [*launcher, "hf_dwakd.cli", "cache-teacher", *flags, "--teacher_cache_dir", str(tmp_path / name)]
        if name == "two":
            command += ["--ddp_backend", "gloo"]
        done = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
    two, one = (load_from_disk(str(tmp_path / name / "train")).with_format("numpy") for name in ("two", "one"))
    assert len(two) == len(one) == 7
    for a, b in zip(two["teacher_hidden"], one["teacher_hidden"]):
        np.testing.assert_array_equal(a, b)
    assert not (tmp_path / "two" / ".shards").exists()


def copied_teacher(tmp_path, folders):
    """A copy of the teacher folder, free to be overwritten."""
    import shutil

    return Path(shutil.copytree(folders / "teacher", tmp_path / "teacher-copy"))


def test_a_teacher_retrained_in_place_is_refused(tmp_path, folders):
    teacher = copied_teacher(tmp_path, folders)
    build(tmp_path, folders, teacher_model_name_or_path=str(teacher))
    # Same name, same config, same tokenizer: other weights.
    tiny_causal_lm(shared_tokenizers()[1], hidden_size=24, seed=9).save_pretrained(teacher)
    with pytest.raises(ValueError, match="another teacher_weights"):
        trainer(
            tmp_path / "run",
            folders,
            teacher_cache_dir=str(tmp_path / "cache"),
            teacher_model_name_or_path=str(teacher),
        )


def test_an_in_memory_teacher_is_known_by_its_weights(tmp_path, folders):
    teacher = AutoModelForCausalLM.from_pretrained(folders / "teacher")
    args = config(tmp_path, folders, teacher_cache_dir=str(tmp_path / "cache"))
    train, evaluation = Dataset.from_list(ROWS), Dataset.from_list(EVAL_ROWS)
    build_teacher_cache(args, train, evaluation, student_tokenizer=shared_tokenizers()[0], teacher_model=teacher)

    def run():
        return DWAKDTrainer(
            model=AutoModelForCausalLM.from_pretrained(folders / "student"),
            teacher_model=teacher,
            args=config(tmp_path / "run", folders, teacher_cache_dir=str(tmp_path / "cache")),
            train_dataset=Dataset.from_list(ROWS),
            eval_dataset=Dataset.from_list(EVAL_ROWS),
            processing_class=shared_tokenizers()[0],
            teacher_processing_class=shared_tokenizers()[1],
        )

    assert run().cached_teacher is not None
    with torch.no_grad():
        next(teacher.model.layers[0].parameters()).add_(0.1)
    with pytest.raises(ValueError, match="another teacher_weights"):
        run()


def test_a_float16_cache_refuses_states_that_overflow(tmp_path, folders):
    tokenizer = shared_tokenizers()[1]
    loud = tiny_causal_lm(tokenizer, hidden_size=24, seed=2)
    with torch.no_grad():
        loud.model.norm.weight.fill_(1e6)  # last hidden states far beyond float16's 65504
    loud.save_pretrained(tmp_path / "loud")
    tokenizer.save_pretrained(tmp_path / "loud")
    with pytest.raises(ValueError, match="beyond the largest float16.*teacher_cache_dtype"):
        build(tmp_path, folders, teacher_model_name_or_path=str(tmp_path / "loud"), teacher_cache_dtype="float16")
    assert not (tmp_path / "cache" / "metadata.json").exists()


def test_the_cached_output_layer_runs_under_the_live_autocast(tmp_path, folders):
    build(tmp_path, folders, bf16=True)
    sides = {}
    # The build runs the teacher padded; so does the live run here, so that only the output layer's autocast differs.
    for name, cache in (("live", None), ("cached", str(tmp_path / "cache"))):
        run = trainer(tmp_path / name, folders, bf16=True, teacher_cache_dir=cache, unpadded_forward=False)
        batch = dict(run.data_collator([run.train_dataset[i] for i in range(2)]))
        with torch.no_grad():
            sides[name], _ = run.teacher_side(batch)
    live, cached = sides["live"], sides["cached"]
    index = live.response_mask.nonzero(as_tuple=True)
    live_logits, cached_logits = live.logits_at(*index), cached.logits_at(*index)
    assert live_logits.dtype == cached_logits.dtype == torch.bfloat16
    torch.testing.assert_close(cached_logits, live_logits)


def test_the_alignment_picture_draws_from_the_cached_teacher(tmp_path, folders):
    build(tmp_path, folders)
    run = trainer(
        tmp_path / "run", folders, teacher_cache_dir=str(tmp_path / "cache"), alignment_plot_steps=2, max_steps=2
    )
    assert run.teacher_model is None
    run.train()
    drawn = sorted(path.name for path in (tmp_path / "run" / "out" / "alignment").glob("*.png"))
    assert drawn == ["step-000000.png", "step-000002.png"]


def test_every_cache_dtype_of_the_config_has_a_storage_type():
    from hf_dwakd.config import CACHE_DTYPES
    from hf_dwakd.teacher_cache import STORAGE_DTYPES

    assert sorted(CACHE_DTYPES) == sorted(STORAGE_DTYPES)
