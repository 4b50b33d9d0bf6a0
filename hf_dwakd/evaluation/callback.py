"""A trainer callback that scores each evaluation by ROUGE-L on a dev subset, for checkpoint selection.

    trainer = Trainer(..., callbacks=[RougeEvalCallback(dolly_selection_examples(data_dir), tokenizer)],
                      args=TrainingArguments(..., metric_for_best_model="eval_rougeL",
                                             load_best_model_at_end=True))

The Trainer passes its metrics dict to `on_evaluate` before it compares `metric_for_best_model`, so the key
added here decides the best checkpoint. The Trainer has already logged that dict by then, so the score is
also written into the evaluation's `state.log_history` entry (and thus `trainer_state.json`).
"""

import logging
import random
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from .benchmarks import Example, example_from_record
from .generation import GenerationSettings, encode_prompts, generate_responses, render_prompts
from .metric import rouge_l

logger = logging.getLogger(__name__)


class RougeEvalCallback(TrainerCallback):
    """Add `eval_rougeL` (one seed of the paper's sampling protocol) to every evaluation's metrics.

    `eval_dataset_or_examples`: `Example`s, or DSKD-format records (a `datasets.Dataset` or dicts with
    `output` and `prompt`/`instruction`). The first `max_examples` are used.
    """

    def __init__(
        self,
        eval_dataset_or_examples: Iterable[Example | Mapping[str, Any]],
        tokenizer: PreTrainedTokenizerBase,
        max_examples: int | None = 200,
        seed: int = 10,
        batch_size: int = 16,
        max_length: int = 512,
        max_prompt_length: int = 256,
        chat_template: bool = False,
        metric_key: str = "eval_rougeL",
    ):
        examples = [
            item if isinstance(item, Example) else example_from_record(item, f"RougeEvalCallback example {index}")
            for index, item in enumerate(eval_dataset_or_examples)
        ][:max_examples]
        if not examples:
            raise ValueError("RougeEvalCallback: eval_dataset_or_examples is empty")
        self.examples = examples
        self.tokenizer = tokenizer
        self.seed = seed
        self.metric_key = metric_key
        self.settings = GenerationSettings(max_length, max_prompt_length, batch_size)
        texts = render_prompts(examples, tokenizer, chat_template)
        self.prompt_ids = encode_prompts(texts, tokenizer, max_prompt_length, chat_template)

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: PreTrainedModel | None = None,
        metrics: dict[str, float] | None = None,
        **kwargs,
    ) -> None:
        was_training = model.training
        model.eval()
        try:
            with _training_rng_kept():
                responses = generate_responses(
                    model, self.tokenizer, self.prompt_ids, self.seed, self.settings, "ROUGE-L evaluation"
                )
        finally:
            model.train(was_training)
        score, _ = rouge_l(responses, [example.references for example in self.examples])
        metrics[self.metric_key] = score
        last_log = state.log_history[-1] if state.log_history else {}
        if last_log.get("step") == state.global_step and metrics.keys() - {self.metric_key} <= last_log.keys():
            last_log[self.metric_key] = score
        if state.is_world_process_zero:
            logger.info("step %d: %s = %.2f", state.global_step, self.metric_key, score)


@contextmanager
def _training_rng_kept():
    """Seeding for generation must not replay the same dropout masks and shuffles after every evaluation."""
    python_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
