"""Turn an optimizer step's batches into batches of sampled responses (on-policy: the student's; `seq_kd`: the
teacher's), built from text by the same two-tokenizer pipeline as a dataset row."""

import copy
from dataclasses import dataclass, field

import torch
from trl.models import unwrap_model_for_generation

from ..data import PROMPT_COLUMN, encode_example
from .sampling import generation_config, sample_responses
from .schedule import is_on_policy_step, sampling_seed

# The key a sampled batch carries: which model sampled it.
SAMPLED_BY = "sampled_by"
STUDENT, TEACHER = "student", "teacher"
# Prefix of the loss components logged for the batches each model sampled (dataset batches: none).
METRIC_PREFIXES = {STUDENT: "on_policy_", TEACHER: "seq_kd_"}
# Why a row of a prompt with no tokens has no sample (the pipeline's own reasons cover the rest).
EMPTY_PROMPT = "empty prompt"


@dataclass
class StepSamples:
    """What one step's sampling did on this process, for the logs."""

    sampled_by: str | None = None
    seconds: float = 0.0
    responses: int = 0
    tokens: int = 0
    unfinished: int = 0
    dropped: int = 0
    fallback_batches: int = 0
    drop_reasons: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str):
        self.dropped += 1
        self.drop_reasons[reason] = self.drop_reasons.get(reason, 0) + 1

    def metrics(self) -> dict[str, float]:
        """`on_policy` (1 on a student-sampled step: its window mean is the on-policy share) and
        `generation_seconds` on every step; on sampled steps also the mean tokens per response and the shares
        of responses that hit `max_new_tokens` and that were dropped, and the micro-batches left with no sample."""
        values = {"on_policy": float(self.sampled_by == STUDENT), "generation_seconds": self.seconds}
        if self.sampled_by is not None:
            values |= {
                "sampled_tokens": self.tokens / self.responses,
                "sampled_unfinished": self.unfinished / self.responses,
                "sampled_dropped": self.dropped / self.responses,
                "sampled_fallback_batches": float(self.fallback_batches),
            }
        return values


class ResponseSampler:
    """Decides which steps sample and rebuilds their batches.

    A step is drawn on-policy with probability `lmbda` (`schedule`): then every micro-batch of the step, on every
    process, holds student samples; otherwise, with `seq_kd`, teacher samples; otherwise the dataset's rows. Each
    sample becomes text with its model's tokenizer and then a row through `data.encode_example`, exactly as a
    dataset row (character spans, response masks, truncation); a sample that stopped at `max_new_tokens` is an
    open-ended completion (no EOS learnt), an empty one or one with no response token left after truncation is
    dropped and counted, and so is a row whose prompt has no token to continue (nothing is sampled for it). A
    micro-batch whose every sample is dropped keeps its dataset rows (counted).
    """

    def __init__(self, args, student_tokenizer, teacher_tokenizer, collator):
        self.args = args
        self.tokenizers = {STUDENT: student_tokenizer, TEACHER: teacher_tokenizer}
        self.collator = collator
        # The config the student-sampled batches train under: `ce_weight` is `on_policy_ce_weight` there.
        self.on_policy_args = copy.copy(args)
        self.on_policy_args.ce_weight = args.on_policy_ce_weight

    def sampled_by(self, step: int) -> str | None:
        """Which model samples the responses of optimizer step `step` (None: the dataset's)."""
        if is_on_policy_step(self.args.seed, step, self.args.lmbda):
            return STUDENT
        return TEACHER if self.args.seq_kd else None

    def loss_args(self, batch):
        """The config a batch trains under: the on-policy one for student samples, else the run's."""
        return self.on_policy_args if batch.get(SAMPLED_BY) == STUDENT else self.args

    def step_batches(self, batches, step, models, accelerator):
        """`(batches, StepSamples)` for optimizer step `step`; `models` maps STUDENT/TEACHER to the (wrapped)
        models, `accelerator` unwraps them for generation."""
        record = StepSamples(self.sampled_by(step))
        if record.sampled_by is None:
            return batches, record
        tokenizer = self.tokenizers[record.sampled_by]
        checkpointing = self.args.gradient_checkpointing_kwargs if record.sampled_by == STUDENT else None
        rebuilt = []
        with unwrap_model_for_generation(
            models[record.sampled_by], accelerator, gradient_checkpointing_kwargs=checkpointing
        ) as model:
            config = generation_config(model, tokenizer, self.args.max_new_tokens, self.args.temperature)
            for index, batch in enumerate(batches):
                position = index * accelerator.num_processes + accelerator.process_index
                seed = sampling_seed(self.args.seed, step, position)
                responses, seconds = sample_responses(
                    model, tokenizer, batch[PROMPT_COLUMN], config, self.args.max_prompt_length, seed
                )
                record.seconds += seconds
                rebuilt.append(self._rebuilt_batch(batch, responses, record))
        return rebuilt, record

    def _rebuilt_batch(self, batch, responses, record):
        rows = []
        for prompt, response in zip(batch[PROMPT_COLUMN], responses):
            record.responses += 1
            if response is None:  # a prompt of no tokens: nothing was sampled
                record.drop(EMPTY_PROMPT)
                continue
            record.tokens += response.num_tokens
            record.unfinished += not response.finished
            completion = (
                response.text if isinstance(prompt, str) else [{"role": "assistant", "content": response.text}]
            )
            columns, reason = encode_example(
                prompt,
                completion,
                (self.tokenizers[STUDENT], self.tokenizers[TEACHER]),
                self.args.max_length,
                self.args.max_prompt_length,
                open_ended=not response.finished,
            )
            if columns is None:
                record.drop(reason)
                continue
            rows.append({**columns, PROMPT_COLUMN: prompt})
        if not rows:
            record.fallback_batches += 1
            return {**batch, SAMPLED_BY: record.sampled_by}
        device = batch["input_ids"].device
        rebuilt = {
            key: value.to(device) if isinstance(value, torch.Tensor) else value
            for key, value in self.collator(rows).items()
        }
        return {**rebuilt, SAMPLED_BY: record.sampled_by}
