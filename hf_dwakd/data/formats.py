"""The dataset formats the pipeline reads, and how one row becomes the prompt and response text of each model."""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from datasets import Features, Value
from transformers import PreTrainedTokenizerBase

# A prompt or completion: a string, or a list of chat messages.
Text = str | list[dict[str, Any]]

# Format name -> the columns that identify it.
FORMATS = {
    "prompt-completion": ("prompt", "completion"),
    "messages": ("messages",),
    "dskd": ("prompt", "output"),
}

ACCEPTED_FORMATS = (
    "'prompt-completion' (TRL: `prompt` and `completion`, both strings or both lists of {role, content} "
    "messages), 'messages' (TRL conversational: `messages`, a list of {role, content} messages whose last one is "
    "the assistant's response), 'dskd' (the DSKD/MiniLLM jsonl files: `prompt` and `output`)"
)


def check_dataset_columns(column_names: Iterable[str]) -> str:
    """The name of the format the columns identify; `ValueError` naming the columns and the accepted formats."""
    names = list(column_names)
    matches = [name for name, needed in FORMATS.items() if set(needed) <= set(names)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        problem = f"matches several formats ({', '.join(matches)}); rename or remove columns so that one matches"
    elif "text" in names:
        problem = (
            "looks like language-modeling text (`text`), which has no response to distill; split each example "
            "into a prompt and a completion"
        )
    else:
        problem = "has no usable columns"
    raise ValueError(f"The dataset (columns: {names}) {problem}. Accepted formats: {ACCEPTED_FORMATS}.")


def is_conversational(data_format: str, features: Features) -> bool:
    """Whether rows hold chat messages (rendered with each tokenizer's chat template) rather than plain strings."""
    if data_format == "messages":
        return True
    return data_format == "prompt-completion" and not isinstance(features["prompt"], Value)


def split_row(row: Mapping[str, Any], data_format: str, index: int) -> tuple[Text, Text]:
    """`(prompt, completion)`: two strings, or two lists of messages.

    In DSKD files `output` may be a list of reference answers (evaluation files); training uses the first one.
    """
    if data_format == "messages":
        messages = list(row["messages"])
        if len(messages) < 2 or messages[-1].get("role") != "assistant":
            roles = [message.get("role") for message in messages]
            raise ValueError(
                f"Row {index}: `messages` must hold at least one prompt message followed by the assistant's "
                f"response (last role 'assistant'); found roles {roles}."
            )
        return messages[:-1], messages[-1:]
    prompt = "" if row["prompt"] is None else row["prompt"]
    completion = row["completion"] if data_format == "prompt-completion" else row["output"]
    if data_format == "dskd" and isinstance(completion, list):
        completion = completion[0] if completion else ""
    if completion is None:
        completion = [] if isinstance(prompt, list) else ""
    if isinstance(prompt, str) != isinstance(completion, str):
        raise ValueError(
            f"Row {index}: prompt and completion must both be strings or both be lists of messages; "
            f"got {type(prompt).__name__} and {type(completion).__name__}."
        )
    return prompt, completion


def is_empty(completion: Text) -> bool:
    """True for a completion with no visible text (an empty or whitespace-only string or message contents)."""
    if isinstance(completion, str):
        return not completion.strip()
    return not "".join(_message_text(message) for message in completion).strip()


def _message_text(message):
    content = message.get("content")
    if isinstance(content, list):  # multimodal-style content parts
        return "".join(part.get("text") or "" for part in content if isinstance(part, dict))
    return content or ""


@dataclass(frozen=True)
class RenderedExample:
    """One model's full text; the completion is `text[completion_start:]`.

    `open_ended`: the completion was cut before its end (a sample that stopped at `max_new_tokens`), so no EOS is
    appended and a chat template's closing markup is left out, as truncation leaves them out.
    """

    text: str
    completion_start: int
    from_chat_template: bool
    open_ended: bool = False


def render_strings(prompt: str, completion: str, open_ended: bool = False) -> RenderedExample:
    """Both models read `prompt + completion`, joined as they are (no separator is added)."""
    return RenderedExample(prompt + completion, len(prompt), from_chat_template=False, open_ended=open_ended)


def render_conversation(
    prompt: list[dict[str, Any]],
    completion: list[dict[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    side: str,
    index: int,
    open_ended: bool = False,
) -> RenderedExample:
    """Render with `tokenizer`'s own chat template; the completion is whatever follows the generation prompt.

    That includes the template's end-of-turn markup, so the model also learns to close its turn; `open_ended` cuts
    the text after the last message's content instead (kept whole where the template altered that content).
    """
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(list(prompt) + list(completion), tokenize=False)
    if not full_text.startswith(prompt_text):
        raise ValueError(
            f"Row {index}: the chat template of the {side} tokenizer ({tokenizer.name_or_path}) does not render "
            "the prompt messages (with the generation prompt) as the start of the full conversation, so the "
            "response cannot be located in its text. Use a template that renders conversations prefix-consistently."
        )
    if open_ended:
        content = _message_text(completion[-1]).rstrip() if completion else ""
        content_start = full_text.rfind(content, len(prompt_text)) if content else -1
        if content_start >= 0:
            full_text = full_text[: content_start + len(content)]
    return RenderedExample(full_text, len(prompt_text), from_chat_template=True, open_ended=open_ended)
