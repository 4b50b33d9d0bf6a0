"""Sample responses with the paper's decoding protocol, batched and left-padded, split across processes.

As in the DSKD/MiniLLM evaluation code a prompt longer than `max_prompt_length` tokens keeps its first
`max_prompt_length` tokens, and every response may use `max_length - max_prompt_length` new tokens, whatever
the lengths of the other prompts in its batch.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import transformers
from accelerate import PartialState
from accelerate.utils import gather_object
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from .benchmarks import Example

TEMPERATURE = 1.0
TOP_P = 1.0
TOP_K = 0


@dataclass(frozen=True)
class GenerationSettings:
    max_length: int = 512
    max_prompt_length: int = 256
    batch_size: int = 16

    def __post_init__(self):
        if not 0 < self.max_prompt_length < self.max_length:
            raise ValueError(
                f"--max_prompt_length ({self.max_prompt_length}) must be positive and below "
                f"--max_length ({self.max_length})"
            )
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be at least 1, got {self.batch_size}")

    @property
    def max_new_tokens(self) -> int:
        return self.max_length - self.max_prompt_length


def render_prompts(
    examples: Sequence[Example], tokenizer: PreTrainedTokenizerBase, chat_template: bool = False
) -> list[str]:
    """The prompt texts: the benchmark's template, or the tokenizer's chat template around the instruction."""
    if not chat_template:
        return [example.prompt for example in examples]
    if tokenizer.chat_template is None:
        raise ValueError("--chat_template: the tokenizer has no chat template; drop the flag for base models")
    texts = []
    for example in examples:
        request = example.instruction or example.prompt
        if example.input:
            request = f"{request}\n\n{example.input}"
        messages = [{"role": "user", "content": request}]
        texts.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return texts


def encode_prompts(
    texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, max_prompt_length: int, chat_template: bool = False
) -> list[list[int]]:
    """Token ids per prompt, cut to the first `max_prompt_length`, tokenized as the training data is.

    Plain text gets the tokenizer's own special tokens (BOS if it adds one) and any "</s>" in it stays text;
    chat-template text already holds its special tokens, which are parsed.
    """
    encoding = tokenizer(list(texts), add_special_tokens=not chat_template, split_special_tokens=not chat_template)
    return [ids[:max_prompt_length] for ids in encoding["input_ids"]]


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack id lists into `(input_ids, attention_mask)`, padding on the left so generation continues them."""
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1
    return input_ids, attention_mask


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's pad id, or its EOS id when it has no pad token (the tokenizer is left untouched)."""
    return tokenizer.eos_token_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id


def sampling_config(
    model: transformers.PreTrainedModel, tokenizer: PreTrainedTokenizerBase, settings: GenerationSettings
) -> transformers.GenerationConfig:
    """The protocol's decoding; neutral values override whatever the checkpoint's generation config sets."""
    eos_token_id = model.generation_config.eos_token_id
    return transformers.GenerationConfig(
        do_sample=True,
        temperature=TEMPERATURE,
        top_p=TOP_P,
        top_k=TOP_K,
        num_beams=1,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        typical_p=1.0,
        min_length=0,
        max_new_tokens=settings.max_new_tokens,
        eos_token_id=tokenizer.eos_token_id if eos_token_id is None else eos_token_id,
        pad_token_id=pad_token_id(tokenizer),
    )


def generate_responses(
    model: transformers.PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: Sequence[Sequence[int]],
    seed: int,
    settings: GenerationSettings,
    description: str = "generating",
) -> list[str]:
    """One sampled response per prompt (texts in prompt order), seeded with `seed` on every process.

    Under `accelerate launch` each process generates for a contiguous share of the prompts and the
    responses are gathered on all processes.
    """
    state = PartialState()
    with state.split_between_processes(list(prompt_ids)) as local_ids:
        local_texts = _generate_local(model, tokenizer, local_ids, seed, settings, description, state)
    return gather_object(local_texts) if state.num_processes > 1 else local_texts


def _generate_local(model, tokenizer, prompt_ids, seed, settings, description, state):
    transformers.set_seed(seed)
    config = sampling_config(model, tokenizer, settings)
    device = next(model.parameters()).device
    starts = range(0, len(prompt_ids), settings.batch_size)
    texts = []
    for start in tqdm(starts, desc=description, disable=not state.is_main_process):
        input_ids, attention_mask = left_pad(prompt_ids[start : start + settings.batch_size], pad_token_id(tokenizer))
        with torch.no_grad():
            output = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), generation_config=config
            )
        new_tokens = output[:, input_ids.shape[1] :]
        decoded = tokenizer.batch_decode(new_tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        texts.extend(text.strip() for text in decoded)
    return texts
