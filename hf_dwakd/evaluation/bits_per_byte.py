"""Teacher-forced bits per byte of reference responses: a score that does not depend on the tokenizer.

A model's cross-entropy per token cannot be compared across tokenizers, since one tokenizer splits the same text
into more tokens than another. Dividing the summed negative log2-likelihood of a response by its length in UTF-8
bytes can: it is the model's code length for that text. It is also far less noisy than ROUGE-L of sampled
responses, which makes it the better signal on small evaluation sets.
"""

import math

import torch

from .benchmarks import Example
from .generation import encode_prompts, render_prompts


@torch.no_grad()
def bits_per_byte(
    model, tokenizer, examples: list[Example], max_prompt_length: int, chat_template: bool = False
) -> float:
    """Sum over `examples` of -log2 p(first reference | prompt), divided by the references' total UTF-8 bytes.

    The prompt is rendered and tokenized as for generation (the benchmark's template, or with `chat_template` the
    instruction in the tokenizer's chat template up to the assistant's turn; its first `max_prompt_length`
    tokens); the reference is tokenized on its own, without special tokens, and scored token by token.
    """
    if not examples:
        raise ValueError("bits_per_byte needs at least one example")
    texts = render_prompts(examples, tokenizer, chat_template)
    prompts = encode_prompts(texts, tokenizer, max_prompt_length, chat_template)
    device = next(model.parameters()).device
    model.eval()
    total_nats, total_bytes = 0.0, 0
    for prompt_ids, example in zip(prompts, examples, strict=True):
        reference = example.references[0]
        response_ids = tokenizer(reference, add_special_tokens=False)["input_ids"]
        if not response_ids:
            continue
        input_ids = torch.tensor([prompt_ids + response_ids], device=device)
        # One example at a time, so no padding; the logits are kept only where they predict the response.
        logits = model(input_ids=input_ids, logits_to_keep=len(response_ids) + 1).logits[0, :-1]
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        targets = torch.tensor(response_ids, device=device)
        total_nats -= float(log_probs.gather(1, targets[:, None]).sum())
        total_bytes += len(reference.encode("utf-8"))
    if total_bytes == 0:
        raise ValueError("bits_per_byte: every reference is empty")
    return total_nats / math.log(2) / total_bytes
