"""RougeEvalCallback: the score it adds, and checkpoint selection by it in a real `transformers.Trainer` run."""

import random

import numpy as np
import pytest
import torch
from rouge_score import rouge_scorer
from safetensors.torch import load_file
from transformers import Trainer, TrainerControl, TrainerState, TrainingArguments

from hf_dwakd.evaluation import callback as callback_module
from hf_dwakd.evaluation.benchmarks import Example, alpaca_prompt
from hf_dwakd.evaluation.callback import RougeEvalCallback
from hf_dwakd.evaluation.generation import GenerationSettings, encode_prompts, generate_responses

from testing_utils import tiny_causal_lm

EXAMPLES = [
    Example(alpaca_prompt("Name a colour."), ("blue",)),
    Example(alpaca_prompt("Greet me."), ("hello there", "hi")),
    Example(alpaca_prompt("Count to three."), ("one two three",)),
]
SHORT = dict(max_length=40, max_prompt_length=32, batch_size=2)


def test_adds_rouge_of_seeded_samples_and_leaves_training_state_alone(student_tokenizer, tmp_path):
    model = tiny_causal_lm(student_tokenizer, family="gpt2").train()
    callback = RougeEvalCallback(EXAMPLES, student_tokenizer, max_examples=2, seed=7, **SHORT)
    state = TrainerState(global_step=3, log_history=[{"eval_loss": 2.0, "epoch": 1.0, "step": 3}])
    metrics = {"eval_loss": 2.0, "epoch": 1.0}

    torch.manual_seed(123), random.seed(123), np.random.seed(123)
    expected_draws = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(123), random.seed(123), np.random.seed(123)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[])
    callback.on_evaluate(args, state, TrainerControl(), model=model, metrics=metrics)
    assert torch.equal(torch.rand(3), expected_draws[0])
    assert (random.random(), np.random.rand()) == expected_draws[1:]
    assert model.training

    model.eval()
    prompt_ids = encode_prompts([example.prompt for example in EXAMPLES[:2]], student_tokenizer, 32)
    responses = generate_responses(model, student_tokenizer, prompt_ids, 7, GenerationSettings(**SHORT))
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [
        100 * max(scorer.score(reference, response)["rougeL"].fmeasure for reference in example.references)
        for example, response in zip(EXAMPLES[:2], responses, strict=True)
    ]
    assert metrics["eval_rougeL"] == pytest.approx(sum(scores) / 2)
    assert state.log_history[-1]["eval_rougeL"] == metrics["eval_rougeL"]


def test_accepts_dskd_records_and_rejects_bad_ones(student_tokenizer):
    records = [{"prompt": "Q\n", "output": ["a", "b"]}, {"instruction": "Say a.", "output": "a"}]
    callback = RougeEvalCallback(records, student_tokenizer, **SHORT)
    assert [example.references for example in callback.examples] == [("a", "b"), ("a",)]
    assert callback.examples[1].prompt == alpaca_prompt("Say a.")
    with pytest.raises(ValueError, match="RougeEvalCallback example 0: no `output` field"):
        RougeEvalCallback([{"prompt": "Q"}], student_tokenizer)
    with pytest.raises(ValueError, match="is empty"):
        RougeEvalCallback([], student_tokenizer)


class TokenizedExamples(torch.utils.data.Dataset):
    def __init__(self, tokenizer):
        texts = [example.prompt + example.references[0] + tokenizer.eos_token for example in EXAMPLES]
        self.items = [torch.tensor(tokenizer(text)["input_ids"]) for text in texts]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return {"input_ids": self.items[index], "labels": self.items[index]}


def pad_batch(batch):
    width = max(len(item["input_ids"]) for item in batch)
    input_ids = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, item in enumerate(batch):
        length = len(item["input_ids"])
        input_ids[row, :length], labels[row, :length], attention_mask[row, :length] = (
            item["input_ids"],
            item["labels"],
            1,
        )
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def test_trainer_keeps_the_checkpoint_with_the_best_rouge(student_tokenizer, tmp_path, monkeypatch):
    # Tiny random models score ~0 ROUGE-L, so the scores are scripted to make step 2 the best; the
    # generation still runs, and the loss keeps falling, so "best" by loss would be the last step.
    scripted = iter([10.0, 30.0, 20.0, 5.0])
    monkeypatch.setattr(callback_module, "rouge_l", lambda predictions, references: (next(scripted), None))
    model = tiny_causal_lm(student_tokenizer, family="gpt2")
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=4,
        learning_rate=1e-2,
        per_device_train_batch_size=3,
        eval_strategy="steps",
        eval_steps=1,
        save_steps=1,
        save_only_model=True,
        metric_for_best_model="eval_rougeL",
        load_best_model_at_end=True,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    dataset = TokenizedExamples(student_tokenizer)
    callback = RougeEvalCallback(EXAMPLES, student_tokenizer, **SHORT)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        eval_dataset=dataset,
        data_collator=pad_batch,
        callbacks=[callback],
    )
    trainer.train()

    evaluations = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    assert [entry["eval_rougeL"] for entry in evaluations] == [10.0, 30.0, 20.0, 5.0]
    assert evaluations[-1]["eval_loss"] < evaluations[1]["eval_loss"]
    assert trainer.state.best_metric == 30.0
    assert trainer.state.best_model_checkpoint == str(tmp_path / "checkpoint-2")
    saved = load_file(str(tmp_path / "checkpoint-2" / "model.safetensors"))
    final = trainer.model.state_dict()
    assert all(torch.equal(final[name], tensor) for name, tensor in saved.items())
    last = load_file(str(tmp_path / "checkpoint-4" / "model.safetensors"))
    assert not all(torch.equal(final[name], tensor) for name, tensor in last.items())
