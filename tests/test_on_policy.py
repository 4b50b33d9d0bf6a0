"""On-policy distillation (`lmbda`, `seq_kd`): which steps sample, what the sampled batches hold on both sides, how
odd samples are handled, that lmbda=0 changes nothing, and that a resumed run draws the same steps."""

import pytest
import torch
from datasets import Dataset

from hf_dwakd import DWAKDTrainer
from hf_dwakd.data import PROMPT_COLUMN, prepare_distillation_dataset
from hf_dwakd.on_policy import SAMPLED_BY, STUDENT, TEACHER, is_on_policy_step, sampling_seed

from testing_utils import (
    CHATML,
    INST,
    ROWS,
    clone_parameters,
    load_tokenizer,
    make_config,
    make_trainer,
    tiny_causal_lm,
)


def first_batch(trainer):
    return next(iter(trainer.get_train_dataloader()))


def step_batches(trainer, batches, step=0):
    models = {STUDENT: trainer.model_wrapped, TEACHER: trainer.teacher_model}
    return trainer.response_sampler.step_batches(batches, step, models, trainer.accelerator)


def decoded(tokenizer, ids, mask):
    return tokenizer.decode([i for i, keep in zip(ids.tolist(), mask.tolist()) if keep], skip_special_tokens=True)


# ---- the config -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(lmbda=1.5), r"`lmbda` is the share of on-policy steps, in \[0, 1\]"),
        (dict(lmbda=-0.1), r"`lmbda`"),
        (dict(lmbda=0.5, max_new_tokens=0), r"`max_new_tokens` must be >= 1"),
        (dict(lmbda=0.5, temperature=0.0), r"`temperature` \(sampling\) must be > 0"),
        (dict(lmbda=0.5, on_policy_ce_weight=-1.0), r"`on_policy_ce_weight` must be >= 0"),
        (dict(on_policy_ce_weight=0.3), r"`on_policy_ce_weight` only applies to on-policy steps: set `lmbda`"),
        (dict(lmbda=0.5, teacher_cache_dir="/tmp/cache"), r"`lmbda` > 0 .*`teacher_cache_dir`"),
        (dict(seq_kd=True, teacher_cache_dir="/tmp/cache"), r"`seq_kd` .*`teacher_cache_dir`"),
        (dict(lmbda=0.5, kd_method="sft"), r"`lmbda` > 0 needs a teacher .*kd_method='sft'"),
        (dict(lmbda=0.5, kd_weight=0.0), r"`kd_weight=0`"),
    ],
)
def test_bad_on_policy_settings_are_refused_naming_the_field(tmp_path, fields, message):
    with pytest.raises(ValueError, match=message):
        make_config(tmp_path, **fields)


# ---- which steps sample ---------------------------------------------------------------------------------------------


def test_the_step_draw_is_a_function_of_seed_and_step_with_the_share_lmbda():
    draws = [is_on_policy_step(7, step, 0.3) for step in range(4000)]
    assert sum(draws) / len(draws) == pytest.approx(0.3, abs=0.03)
    assert draws == [is_on_policy_step(7, step, 0.3) for step in range(4000)]
    assert draws != [is_on_policy_step(8, step, 0.3) for step in range(4000)]
    assert not any(is_on_policy_step(7, step, 0.0) for step in range(200))
    assert all(is_on_policy_step(7, step, 1.0) for step in range(200))
    seeds = {sampling_seed(7, step, position) for step in range(20) for position in range(4)}
    assert len(seeds) == 80


def test_lmbda_zero_trains_bit_for_bit_as_without_the_fields(tmp_path):
    plain = make_trainer(tmp_path / "plain")
    assert plain.response_sampler is None
    plain.train()
    zero = make_trainer(tmp_path / "zero", lmbda=0.0, max_new_tokens=5, temperature=0.3)
    assert zero.response_sampler is None and PROMPT_COLUMN not in zero.train_dataset.column_names
    zero.train()

    for (name, value), other in zip(clone_parameters(plain.model).items(), clone_parameters(zero.model).values()):
        assert torch.equal(value, other), name
    assert [e for e in plain.state.log_history if "loss" in e] == [e for e in zero.state.log_history if "loss" in e]


# ---- what a sampled batch holds -------------------------------------------------------------------------------------


def test_the_students_samples_reach_both_sides_as_the_same_text(tmp_path):
    trainer = make_trainer(tmp_path, lmbda=1.0, max_new_tokens=12, max_length=256, max_prompt_length=64)
    batch = first_batch(trainer)
    (sampled,), record = step_batches(trainer, [batch])
    assert record.sampled_by == STUDENT and sampled[SAMPLED_BY] == STUDENT

    # The same samples, drawn here with the student's own `generate` from its tokens of each prompt.
    tokenizer, teacher_tokenizer = trainer.processing_class, trainer.teacher_processing_class
    prompts = batch[PROMPT_COLUMN]
    rows = [tokenizer(prompt)["input_ids"] for prompt in prompts]
    width = max(map(len, rows))
    input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows])
    attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    torch.manual_seed(sampling_seed(trainer.args.seed, 0, 0))
    trainer.model.eval()
    with torch.no_grad():
        generated = trainer.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            do_sample=True,
            temperature=trainer.args.temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=12,
            pad_token_id=tokenizer.pad_token_id,
        )
    texts = []
    for completion in generated[:, width:].tolist():
        if tokenizer.eos_token_id in completion:
            completion = completion[: completion.index(tokenizer.eos_token_id)]
        texts.append(tokenizer.decode(completion))

    for index, (prompt, text) in enumerate(zip(prompts, texts)):
        assert text.strip()
        for prefix, side_tokenizer in (("", tokenizer), ("teacher_", teacher_tokenizer)):
            ids, mask = sampled[f"{prefix}input_ids"][index], sampled[f"{prefix}attention_mask"][index]
            labels = sampled[f"{prefix}labels"][index]
            assert decoded(side_tokenizer, ids, mask) == prompt + text, prefix
            # The labels cover the sample: the response tokens decode to its end.
            response = decoded(side_tokenizer, ids, labels != -100)
            assert text.endswith(response.strip()) and response.strip(), prefix
    assert batch["input_ids"].shape != sampled["input_ids"].shape or not torch.equal(
        batch["input_ids"], sampled["input_ids"]
    )


class ScriptedModel(torch.nn.Module):
    """A stand-in for a model: `generate` appends the scripted token rows to the prompts."""

    is_gradient_checkpointing = False

    def __init__(self, completions, pad_token_id, eos_token_id):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.completions = completions
        self.generation_config = type("GenerationConfig", (), {"eos_token_id": eos_token_id})()
        self.pad_token_id = pad_token_id

    def generate(self, input_ids, attention_mask, generation_config):
        width = max(map(len, self.completions))
        tails = [row + [self.pad_token_id] * (width - len(row)) for row in self.completions]
        return torch.cat([input_ids, torch.tensor(tails)], dim=1)


def scripted_step(trainer, completions):
    tokenizer = trainer.processing_class
    model = ScriptedModel(completions, tokenizer.pad_token_id, tokenizer.eos_token_id)
    batch = trainer.data_collator([{**trainer.train_dataset[i]} for i in range(len(completions))])
    models = {STUDENT: model, TEACHER: trainer.teacher_model}
    (sampled,), record = trainer.response_sampler.step_batches([batch], 0, models, trainer.accelerator)
    return batch, sampled, record


def test_odd_samples_are_handled_like_dataset_rows(tmp_path):
    trainer = make_trainer(tmp_path, lmbda=1.0, max_new_tokens=60, max_length=64, max_prompt_length=32)
    tokenizer, teacher_tokenizer = trainer.processing_class, trainer.teacher_processing_class
    eos, teacher_eos = tokenizer.eos_token_id, teacher_tokenizer.eos_token_id
    sides = (("", eos, tokenizer), ("teacher_", teacher_eos, teacher_tokenizer))

    def last_labels(sampled, prefix):
        lengths = sampled[f"{prefix}attention_mask"].sum(dim=1).tolist()
        return [sampled[f"{prefix}labels"][row, length - 1].item() for row, length in enumerate(lengths)]

    # A finished sample, an empty one, and one of max_new_tokens that overflows max_length (generate pads the
    # shorter rows with the pad token, GPT-2's EOS).
    finished = tokenizer(" Blue.")["input_ids"] + [eos]
    long = tokenizer(" one two three four five six seven eight nine ten" * 6)["input_ids"][:60]
    batch, sampled, record = scripted_step(trainer, [finished, [eos], long])
    assert record.responses == 3 and record.dropped == 1 and record.drop_reasons == {"empty completion": 1}
    assert record.unfinished == 1 and record.tokens == len(finished) + 1 + 60
    prompts = [trainer.train_dataset[i][PROMPT_COLUMN] for i in (0, 2)]
    assert sampled[PROMPT_COLUMN] == prompts and sampled["input_ids"].shape[0] == 2
    for prefix, side_eos, side_tokenizer in sides:
        assert last_labels(sampled, prefix)[0] == side_eos, prefix  # a finished sample learns to stop
        assert last_labels(sampled, prefix)[1] != side_eos, prefix  # a truncated one does not
        assert sampled[f"{prefix}attention_mask"].sum(dim=1).max() <= 64, prefix
        text = decoded(side_tokenizer, sampled[f"{prefix}input_ids"][1], sampled[f"{prefix}attention_mask"][1])
        assert text.startswith(prompts[1] + " one two") and len(text) < len(prompts[1] + tokenizer.decode(long))
    metrics = record.metrics()
    assert metrics["sampled_dropped"] == pytest.approx(1 / 3) and metrics["sampled_unfinished"] == pytest.approx(1 / 3)
    assert metrics["on_policy"] == 1.0 and metrics["sampled_fallback_batches"] == 0.0

    # Samples that stop at max_new_tokens without EOS, inside max_length: kept whole, with no EOS to learn.
    open_ended = tokenizer(" Blue, like")["input_ids"]
    _, sampled, record = scripted_step(trainer, [open_ended, open_ended])
    assert record.unfinished == 2 and record.dropped == 0
    prompts = [trainer.train_dataset[i][PROMPT_COLUMN] for i in (0, 1)]
    for prefix, side_eos, side_tokenizer in sides:
        assert side_eos not in last_labels(sampled, prefix), prefix
        for row, prompt in enumerate(prompts):
            ids, mask = sampled[f"{prefix}input_ids"][row], sampled[f"{prefix}attention_mask"][row]
            assert decoded(side_tokenizer, ids, mask) == prompt + " Blue, like", prefix


def test_sampled_chat_rows_are_the_rows_the_pipeline_builds_from_the_same_messages(tmp_path):
    student_tokenizer, teacher_tokenizer = load_tokenizer("gpt2"), load_tokenizer("llama2")
    student_tokenizer.chat_template, teacher_tokenizer.chat_template = CHATML, INST
    rows = [
        {"prompt": [{"role": "user", "content": row["prompt"]}], "completion": [{"role": "assistant", "content": "x"}]}
        for row in ROWS
    ]
    trainer = DWAKDTrainer(
        model=tiny_causal_lm(student_tokenizer, hidden_size=16, seed=1),
        teacher_model=tiny_causal_lm(teacher_tokenizer, hidden_size=24, seed=2),
        args=make_config(tmp_path, lmbda=1.0, max_new_tokens=8),
        train_dataset=Dataset.from_list(rows),
        processing_class=student_tokenizer,
        teacher_processing_class=teacher_tokenizer,
    )
    eos = student_tokenizer.eos_token_id
    answer = student_tokenizer(" Blue.")["input_ids"]
    _, sampled, record = scripted_step(trainer, [answer + [eos], answer + student_tokenizer(" Sky")["input_ids"]])
    assert record.unfinished == 1 and record.dropped == 0

    # The finished sample: exactly the row the pipeline builds for that answer as the assistant's message.
    expected = prepare_distillation_dataset(
        Dataset.from_list([{**rows[0], "completion": [{"role": "assistant", "content": " Blue."}]}]),
        student_tokenizer,
        teacher_tokenizer,
        max_length=64,
        max_prompt_length=32,
    )[0]
    for prefix in ("", "teacher_"):
        length = int(sampled[f"{prefix}attention_mask"][0].sum())
        for name in ("input_ids", "labels"):
            assert sampled[f"{prefix}{name}"][0, :length].tolist() == expected[f"{prefix}{name}"], prefix + name
    # The open-ended one stops after its text on both sides: no closing markup, no EOS.
    for prefix, tokenizer in (("", student_tokenizer), ("teacher_", teacher_tokenizer)):
        length = int(sampled[f"{prefix}attention_mask"][1].sum())
        text = tokenizer.decode(sampled[f"{prefix}input_ids"][1, :length])
        assert text.endswith("Blue. Sky"), (prefix, text)
        assert sampled[f"{prefix}labels"][1, length - 1].item() != tokenizer.eos_token_id


def test_a_micro_batch_whose_every_sample_is_dropped_keeps_its_dataset_rows(tmp_path):
    trainer = make_trainer(tmp_path, lmbda=1.0, max_new_tokens=4)
    eos = trainer.processing_class.eos_token_id
    batch, sampled, record = scripted_step(trainer, [[eos], [eos]])
    assert record.dropped == 2 and record.fallback_batches == 1
    assert torch.equal(sampled["input_ids"], batch["input_ids"]) and sampled[SAMPLED_BY] == STUDENT


def test_a_prompt_without_tokens_is_not_sampled_and_its_row_is_dropped(tmp_path):
    """GPT-2 adds no BOS, so an empty prompt leaves the student nothing to continue: that row is dropped and counted
    like an empty sample, the others are sampled, and a micro-batch of only such prompts keeps its dataset rows."""
    trainer = make_trainer(tmp_path, lmbda=1.0, max_new_tokens=4)
    tokenizer = trainer.processing_class
    eos = tokenizer.eos_token_id
    answer = tokenizer(" Blue.")["input_ids"] + [eos]
    model = ScriptedModel([answer], tokenizer.pad_token_id, eos)
    batch = trainer.data_collator([{**trainer.train_dataset[i]} for i in range(2)])
    batch[PROMPT_COLUMN] = ["", batch[PROMPT_COLUMN][1]]
    models = {STUDENT: model, TEACHER: trainer.teacher_model}
    (sampled,), record = trainer.response_sampler.step_batches([batch], 0, models, trainer.accelerator)
    assert record.responses == 2 and record.drop_reasons == {"empty prompt": 1} and record.fallback_batches == 0
    assert sampled[PROMPT_COLUMN] == [batch[PROMPT_COLUMN][1]]
    assert decoded(tokenizer, sampled["input_ids"][0], sampled["attention_mask"][0]).endswith(" Blue.")

    batch[PROMPT_COLUMN] = ["", ""]
    (sampled,), record = trainer.response_sampler.step_batches([batch], 0, models, trainer.accelerator)
    assert record.drop_reasons == {"empty prompt": 2} and record.fallback_batches == 1 and record.seconds == 0.0
    assert torch.equal(sampled["input_ids"], batch["input_ids"])


def test_seq_kd_steps_hold_the_teachers_samples(tmp_path):
    trainer = make_trainer(tmp_path, seq_kd=True, max_new_tokens=6, max_length=256, max_prompt_length=64)
    teacher_tokenizer = trainer.teacher_processing_class
    eos = teacher_tokenizer.eos_token_id
    scripted = ScriptedModel([teacher_tokenizer(" Bleu.", add_special_tokens=False)["input_ids"] + [eos]] * 2, 0, eos)
    batch = first_batch(trainer)
    models = {STUDENT: trainer.model_wrapped, TEACHER: scripted}
    (sampled,), record = trainer.response_sampler.step_batches([batch], 0, models, trainer.accelerator)
    assert record.sampled_by == TEACHER and sampled[SAMPLED_BY] == TEACHER
    for index, prompt in enumerate(batch[PROMPT_COLUMN]):
        for prefix, tokenizer in (("", trainer.processing_class), ("teacher_", teacher_tokenizer)):
            ids, mask = sampled[f"{prefix}input_ids"][index], sampled[f"{prefix}attention_mask"][index]
            assert decoded(tokenizer, ids, mask) == prompt + " Bleu.", prefix
    # The CE on the teacher's samples keeps `ce_weight`; on the student's, `on_policy_ce_weight`.
    assert trainer.response_sampler.loss_args(sampled).ce_weight == trainer.args.ce_weight


def test_on_policy_batches_train_under_on_policy_ce_weight(tmp_path):
    trainer = make_trainer(tmp_path, lmbda=1.0, on_policy_ce_weight=0.25, max_new_tokens=4)
    sampler = trainer.response_sampler
    assert sampler.loss_args({SAMPLED_BY: STUDENT}).ce_weight == 0.25
    assert sampler.loss_args({SAMPLED_BY: STUDENT}).loss_options().ce_weight == 0.25
    assert sampler.loss_args({}).ce_weight == trainer.args.ce_weight == 0.5


# ---- training -------------------------------------------------------------------------------------------------------


def test_training_logs_the_on_policy_share_and_resumes_the_same_draws(tmp_path):
    # seed 2 draws steps 0, 1, 3 on-policy and step 2 off-policy.
    common = dict(lmbda=0.5, seed=2, max_new_tokens=6, max_steps=4, save_strategy="steps", save_steps=2)
    expected = [is_on_policy_step(2, step, 0.5) for step in range(4)]
    assert expected == [True, True, False, True]
    straight = make_trainer(tmp_path / "straight", **common)
    start = clone_parameters(straight.model)
    straight.train()
    logs = [e for e in straight.state.log_history if "loss" in e]
    assert [e["on_policy"] == 1.0 for e in logs] == expected
    for entry, on_policy in zip(logs, expected):
        assert ("on_policy_kd_teacher" in entry) == on_policy and ("kd_teacher" in entry) != on_policy
        assert ("sampled_tokens" in entry) == on_policy and entry["generation_seconds"] >= 0
        assert ("ce" in entry) != on_policy  # on_policy_ce_weight = 0: no CE on the student's own samples
    assert any(not torch.equal(value, straight.model.state_dict()[name]) for name, value in start.items())

    resumed = make_trainer(tmp_path / "resumed", **common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "straight" / "out" / "checkpoint-2"))
    resumed_logs = [e for e in resumed.state.log_history if "loss" in e and e["step"] > 2]  # after the checkpoint
    assert [e["step"] for e in resumed_logs] == [3, 4]
    assert [e["on_policy"] == 1.0 for e in resumed_logs] == expected[2:]
    for entry, original in zip(resumed_logs, logs[2:]):
        assert entry["loss"] == pytest.approx(original["loss"], abs=1e-6)
        assert entry.get("sampled_tokens") == original.get("sampled_tokens")


@pytest.mark.parametrize("kd_method", ["dwakd", "dskd", "uld", "mined", "multilevel_ot"])
def test_every_method_with_a_teacher_trains_on_policy(tmp_path, kd_method):
    trainer = make_trainer(tmp_path, kd_method=kd_method, lmbda=1.0, max_new_tokens=4, max_steps=1)
    start = clone_parameters(trainer.model)
    trainer.train()
    (entry,) = [e for e in trainer.state.log_history if "loss" in e]
    assert entry["on_policy"] == 1.0 and entry["sampled_tokens"] > 0
    assert any(key.startswith("on_policy_kd") for key in entry), entry
    assert any(not torch.equal(value, trainer.model.state_dict()[name]) for name, value in start.items())


def test_seq_kd_trains_on_the_teachers_samples(tmp_path):
    trainer = make_trainer(tmp_path, seq_kd=True, max_new_tokens=4, max_steps=1)
    trainer.train()
    (entry,) = [e for e in trainer.state.log_history if "loss" in e]
    assert entry["on_policy"] == 0.0 and entry["sampled_tokens"] > 0 and "seq_kd_ce" in entry
