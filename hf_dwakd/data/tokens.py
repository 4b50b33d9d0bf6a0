"""One model's tokens of a rendered example, with character spans and the response rule."""

from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase

from .formats import RenderedExample


@dataclass(frozen=True)
class SideTokens:
    """Token ids with their character spans `[starts, ends)` in the text, in order; EOS sits at `(n, n)`."""

    ids: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    is_response: np.ndarray
    completion_start: int
    text_length: int


def tokenize_side(tokenizer: PreTrainedTokenizerBase, example: RenderedExample) -> SideTokens:
    """Tokenize `example.text` once with offsets and mark the response tokens.

    A token is a response token iff it carries at least one completion character. A token that straddles the
    prompt/completion boundary (say GPT-2's " four" after a prompt ending in a space) is therefore a response
    token, and the response then starts with the prompt characters it holds.

    Plain strings get the tokenizer's own special tokens (BOS if it adds one) and are read as text, so a literal
    "</s>" or "<s>" in the data stays text. Chat-template text already holds its special tokens, which are parsed.
    EOS is appended unless the text already ends with it (whitespace after a template's final EOS is dropped), or
    the example is open-ended (its completion was cut).
    """
    text = example.text
    eos_id = tokenizer.eos_token_id
    if example.from_chat_template:
        stripped = text.rstrip()
        if stripped.endswith(tokenizer.eos_token) and len(stripped) > example.completion_start:
            text = stripped
    encoding = tokenizer(
        text,
        add_special_tokens=not example.from_chat_template,
        split_special_tokens=not example.from_chat_template,
        return_offsets_mapping=True,
    )
    ids = list(encoding["input_ids"])
    spans = [tuple(span) for span in encoding["offset_mapping"]]
    end = len(text)
    if example.open_ended:
        if ids and ids[-1] == eos_id and spans[-1][0] == spans[-1][1]:  # an EOS the post-processor added
            ids, spans = ids[:-1], spans[:-1]
    elif not ids or ids[-1] != eos_id:
        ids.append(eos_id)
        spans.append((end, end))
    elif spans[-1][0] == spans[-1][1]:
        spans[-1] = (end, end)  # an EOS added by the tokenizer's post-processor carries no characters
    starts = np.array([span[0] for span in spans], dtype=np.int64)
    ends = np.array([span[1] for span in spans], dtype=np.int64)
    return SideTokens(
        ids=np.array(ids, dtype=np.int64),
        starts=starts,
        ends=ends,
        is_response=ends > example.completion_start,
        completion_start=example.completion_start,
        text_length=end,
    )
