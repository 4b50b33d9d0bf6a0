"""Turn a dataset of prompts and responses into token ids and labels for both the student and the teacher."""

import warnings
from collections import Counter
from collections.abc import Sequence
from functools import partial

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from ..teacher_list import teacher_prefix
from .collator import PROMPT_COLUMN
from .formats import (
    Text,
    check_dataset_columns,
    is_conversational,
    is_empty,
    render_conversation,
    render_strings,
    split_row,
)
from .tokens import tokenize_side
from .truncation import choose_window, keep_window

EMPTY_COMPLETION = "empty completion"
TRUNCATED_AWAY = "response truncated away"
_DROP_DESCRIPTIONS = {
    EMPTY_COMPLETION: "with an empty completion",
    TRUNCATED_AWAY: "whose response was entirely truncated away",
}
_DROP_COLUMN = "_drop_reason"


def prepare_distillation_dataset(
    dataset: Dataset,
    student_tokenizer: PreTrainedTokenizerBase,
    teacher_tokenizer: PreTrainedTokenizerBase | list[PreTrainedTokenizerBase],
    max_length: int = 512,
    max_prompt_length: int = 256,
    num_proc: int | None = None,
    keep_prompts: bool = False,
) -> Dataset:
    """Tokenize every row for the student and each teacher; see `check_dataset_columns` for the formats read.

    Returns a `datasets.Dataset` with list columns `input_ids`, `attention_mask`, `labels` (student) and
    `teacher_input_ids`, `teacher_attention_mask`, `teacher_labels`; a list of teacher tokenizers gives the second
    teacher `teacher_2_input_ids`, ... (`teacher_list.teacher_prefix`), built by the same steps. Labels are aligned
    with the input ids (the model shifts them): the token id on response tokens and the final EOS, -100 on the prompt.

    - Plain strings: both models read `prompt + completion`. Conversations: each model renders its own chat
      template. In DSKD files whose `output` is a list of references, training uses the first.
    - Response tokens are found from character offsets: a token is a response token iff it carries a completion
      character (see `tokens.tokenize_side`).
    - A prompt over `max_prompt_length` tokens keeps its start; then the response is cut to fit `max_length`.
      Sides that read the same text are cut at the same characters, all teachers' included (see `truncation`).
    - Rows with an empty completion, or with no response token left after truncation, are dropped and counted in
      one warning; a `ValueError` is raised when no row is left.
    - `keep_prompts`: also keep each row's prompt, as `split_row` reads it, in a column `prompt` (on-policy
      sampling starts from it; `encode_example` then builds the sampled rows).
    """
    data_format = check_dataset_columns(dataset.column_names)
    if len(dataset) == 0:
        raise ValueError("The dataset has no rows.")
    if not 0 < max_prompt_length < max_length:
        raise ValueError(
            f"max_prompt_length ({max_prompt_length}) must be positive and smaller than max_length ({max_length}) "
            "so that some response fits."
        )
    conversational = is_conversational(data_format, dataset.features)
    teacher_tokenizers = teacher_tokenizer if isinstance(teacher_tokenizer, (list, tuple)) else [teacher_tokenizer]
    tokenizers = (student_tokenizer, *teacher_tokenizers)
    for side, tokenizer in zip(_side_names(len(tokenizers)), tokenizers):
        _check_tokenizer(tokenizer, side, conversational)

    encode = partial(
        _encode_row,
        data_format=data_format,
        tokenizers=tokenizers,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        keep_prompts=keep_prompts,
    )
    encoded = dataset.map(
        encode,
        with_indices=True,
        remove_columns=dataset.column_names,
        num_proc=num_proc,
        desc=f"Tokenizing for the student and {len(teacher_tokenizers)} teacher(s)",
    )
    dropped = Counter(reason for reason in encoded[_DROP_COLUMN] if reason)
    if dropped:
        counts = ", ".join(f"{count} {_DROP_DESCRIPTIONS[reason]}" for reason, count in sorted(dropped.items()))
        report = (
            f"Dropped {sum(dropped.values())} of {len(dataset)} rows: {counts} "
            f"(max_length={max_length}, max_prompt_length={max_prompt_length})."
        )
        if sum(dropped.values()) == len(dataset):
            raise ValueError(f"No usable rows. {report}")
        warnings.warn(report, stacklevel=2)
        encoded = encoded.filter(lambda reason: not reason, input_columns=_DROP_COLUMN, num_proc=num_proc)
    return encoded.remove_columns(_DROP_COLUMN)


def _check_tokenizer(tokenizer, side, conversational):
    name = f"The {side} tokenizer ({tokenizer.name_or_path})"
    if not tokenizer.is_fast:
        raise ValueError(
            f"{name} is a slow (Python) tokenizer. Response positions come from character offsets "
            "(`return_offsets_mapping`), which only fast tokenizers give: load one backed by a `tokenizer.json`, "
            "e.g. with `AutoTokenizer.from_pretrained(...)`."
        )
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{name} has no EOS token; set `{side}_tokenizer.eos_token` so responses can end.")
    if conversational and not tokenizer.chat_template:
        raise ValueError(
            f"{name} has no chat template, which conversational rows need. Set one before preparing the data, "
            f"e.g. `{side}_tokenizer.chat_template = <the Jinja template of that model family's chat version>`, "
            "or pass prompt-completion strings instead."
        )


def encode_example(
    prompt: Text,
    completion: Text,
    tokenizers: Sequence[PreTrainedTokenizerBase],
    max_length: int,
    max_prompt_length: int,
    index: int = 0,
    open_ended: bool = False,
) -> tuple[dict[str, list[int]] | None, str]:
    """`(columns, drop_reason)` of one prompt and completion for the tokenizers (the student's, then each
    teacher's): the columns of `prepare_distillation_dataset`, or None and the reason the row is dropped.
    `open_ended`: the completion was cut (no EOS, no closing chat markup; see `RenderedExample`)."""
    if is_empty(completion):
        return None, EMPTY_COMPLETION
    if isinstance(prompt, str):
        example = render_strings(prompt, completion, open_ended)
        tokens = [tokenize_side(tokenizer, example) for tokenizer in tokenizers]
        windows = [choose_window(tokens, max_length, max_prompt_length)] * len(tokens)
    else:
        # Each side renders its own template, so each is cut on its own.
        tokens = [
            tokenize_side(tokenizer, render_conversation(prompt, completion, tokenizer, side, index, open_ended))
            for tokenizer, side in zip(tokenizers, _side_names(len(tokenizers)))
        ]
        windows = [choose_window([side], max_length, max_prompt_length) for side in tokens]
    if None in windows:
        return None, TRUNCATED_AWAY

    columns = {}
    for prefix, side, window in zip(_prefixes(len(tokenizers)), tokens, windows):
        input_ids, labels = keep_window(side, window)
        columns[f"{prefix}input_ids"] = input_ids
        columns[f"{prefix}attention_mask"] = [1] * len(input_ids)
        columns[f"{prefix}labels"] = labels
    return columns, ""


def _encode_row(row, index, data_format, tokenizers, max_length, max_prompt_length, keep_prompts):
    prompt, completion = split_row(row, data_format, index)
    columns, reason = encode_example(prompt, completion, tokenizers, max_length, max_prompt_length, index)
    if columns is None:
        names = ("input_ids", "attention_mask", "labels")
        columns = {f"{prefix}{name}": [] for prefix in _prefixes(len(tokenizers)) for name in names}
    columns[_DROP_COLUMN] = reason
    if keep_prompts:
        columns[PROMPT_COLUMN] = prompt
    return columns


def _prefixes(count):
    """Column prefixes of `count` sides: the student's (none), then each teacher's."""
    return ["", *(teacher_prefix(index) for index in range(count - 1))]


def _side_names(count):
    return ["student", *("teacher" if index == 0 else f"teacher {index + 1}" for index in range(count - 1))]
