import math

import pytest
import torch

from hf_dwakd.evaluation.benchmarks import Example
from hf_dwakd.evaluation.bits_per_byte import bits_per_byte

from testing_utils import load_tokenizer, tiny_causal_lm

EXAMPLES = [
    Example(prompt="### Instruction:\nName a colour.\n\n### Response:\n", references=("Blue, like the sky.", "Red")),
    Example(prompt="### Instruction:\nSay hi in French.\n\n### Response:\n", references=("Bonjour à tous !",)),
]


def reference_bits_per_byte(model, tokenizer, examples, max_prompt_length):
    """Full-sequence logits, one position at a time."""
    nats, num_bytes = 0.0, 0
    for example in examples:
        prompt = tokenizer(example.prompt)["input_ids"][:max_prompt_length]
        response = tokenizer(example.references[0], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + response])).logits[0].double()
        for offset, token in enumerate(response):
            nats -= float(torch.log_softmax(logits[len(prompt) + offset - 1], dim=-1)[token])
        num_bytes += len(example.references[0].encode("utf-8"))
    return nats / math.log(2) / num_bytes


@pytest.mark.parametrize("tokenizer_name, family", [("gpt2", "gpt2"), ("llama2", "llama")])
def test_matches_a_position_by_position_computation(tokenizer_name, family):
    tokenizer = load_tokenizer(tokenizer_name)
    model = tiny_causal_lm(tokenizer, family=family, hidden_size=16, seed=3).eval()
    expected = reference_bits_per_byte(model, tokenizer, EXAMPLES, max_prompt_length=8)
    assert bits_per_byte(model, tokenizer, EXAMPLES, max_prompt_length=8) == pytest.approx(expected, rel=1e-5)
    # A random model spreads its probability: about log2(V) bits per token, several tokens per 4-5 bytes.
    assert expected > 1.0


def test_no_examples_is_refused():
    tokenizer = load_tokenizer("gpt2")
    with pytest.raises(ValueError, match="at least one example"):
        bits_per_byte(tiny_causal_lm(tokenizer, hidden_size=16), tokenizer, [], max_prompt_length=8)


def test_chat_template_scores_the_reference_after_the_assistant_turn():
    tokenizer = load_tokenizer("gpt2")
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    model = tiny_causal_lm(tokenizer, family="gpt2", hidden_size=16, seed=5).eval()
    examples = [Example(prompt="ignored", references=("Blue.",), instruction="Name a colour.", input="Any.")]
    rendered = [Example(prompt="<|user|>Name a colour.\n\nAny.\n<|assistant|>", references=("Blue.",))]
    # gpt2 adds no special tokens, so the rendered text tokenized plainly is the chat prompt.
    expected = reference_bits_per_byte(model, tokenizer, rendered, max_prompt_length=64)
    assert bits_per_byte(model, tokenizer, examples, 64, chat_template=True) == pytest.approx(expected, rel=1e-5)
    assert bits_per_byte(model, tokenizer, examples, 64) != pytest.approx(expected, rel=1e-3)
