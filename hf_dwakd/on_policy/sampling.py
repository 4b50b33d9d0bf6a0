"""One model samples a response to each prompt of a batch; the responses come back as text."""

import time
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase

from ..data.formats import Text, render_strings
from ..data.tokens import tokenize_side


@dataclass(frozen=True)
class SampledResponse:
    """A response as text, whether it ended with EOS (else it stopped at `max_new_tokens`), and its token count
    (EOS included)."""

    text: str
    finished: bool
    num_tokens: int


def prompt_token_ids(tokenizer: PreTrainedTokenizerBase, prompt: Text) -> list[int]:
    """The prompt's tokens as the data pipeline gives them to the model: plain strings with the tokenizer's own
    special tokens (read as text), chat messages through its chat template with the generation prompt."""
    if isinstance(prompt, str):
        return tokenize_side(tokenizer, render_strings(prompt, "", open_ended=True)).ids.tolist()
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def generation_config(model, tokenizer: PreTrainedTokenizerBase, max_new_tokens: int, temperature: float):
    """Pure sampling at `temperature` (no top-k/top-p, as TRL's GKD), stopping at the model's EOS tokens."""
    eos_ids = getattr(model.generation_config, "eos_token_id", None)
    eos_ids = [] if eos_ids is None else [eos_ids] if isinstance(eos_ids, int) else list(eos_ids)
    if tokenizer.eos_token_id not in eos_ids:
        eos_ids.append(tokenizer.eos_token_id)
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos_ids,
    )


@torch.no_grad()
def sample_responses(
    model,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Text],
    config: GenerationConfig,
    max_prompt_length: int,
    seed: int,
) -> tuple[list[SampledResponse | None], float]:
    """`(responses, seconds)`: one sampled response per prompt, with `model` in eval mode (no dropout) and the
    random state forked and seeded with `seed`, so the training's own random state is untouched.

    A prompt over `max_prompt_length` tokens is sampled after its first `max_prompt_length`, the part of it that
    training keeps. A prompt of no tokens (an empty one, with a tokenizer that adds no BOS) gives the model
    nothing to continue: its response is None, unsampled. The batch is left-padded; decoding skips special tokens.
    """
    device = next(model.parameters()).device
    all_rows = [prompt_token_ids(tokenizer, prompt)[:max_prompt_length] for prompt in prompts]
    rows = [row for row in all_rows if row]
    if not rows:
        return [None] * len(all_rows), 0.0
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention_mask[index, width - len(row) :] = 1

    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            sequences = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), generation_config=config
            )
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start

    eos_ids = set(config.eos_token_id)
    responses = []
    for row, completion in zip(rows, sequences[:, width:].tolist()):
        stop = next((position for position, token in enumerate(completion) if token in eos_ids), None)
        kept = completion if stop is None else completion[:stop]
        text = continuation_text(tokenizer, row, kept)
        responses.append(SampledResponse(text, finished=stop is not None, num_tokens=len(kept) + (stop is not None)))
    sampled = iter(responses)
    return [next(sampled) if row else None for row in all_rows], seconds


def continuation_text(tokenizer: PreTrainedTokenizerBase, prompt_ids: list[int], completion_ids: list[int]) -> str:
    """The text `completion_ids` add after `prompt_ids`. Decoded in context: alone, a SentencePiece tokenizer
    would drop the space its first token starts with (Llama's "▁Blue" decodes to "Blue")."""
    options = dict(skip_special_tokens=True, clean_up_tokenization_spaces=False)
    prompt_text = tokenizer.decode(prompt_ids, **options)
    full_text = tokenizer.decode(prompt_ids + completion_ids, **options)
    if full_text.startswith(prompt_text):
        return full_text[len(prompt_text) :]
    return tokenizer.decode(completion_ids, **options)
