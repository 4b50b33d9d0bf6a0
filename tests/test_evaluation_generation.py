"""Prompt encoding, left padding, the sampling configuration and seeded reproducibility."""

import pytest
import torch

from hf_dwakd.evaluation.benchmarks import Example, alpaca_prompt
from hf_dwakd.evaluation.generation import (
    GenerationSettings,
    encode_prompts,
    generate_responses,
    left_pad,
    render_prompts,
    sampling_config,
)

from testing_utils import tiny_causal_lm

SETTINGS = GenerationSettings(max_length=40, max_prompt_length=32, batch_size=2)
PROMPTS = [alpaca_prompt("Name a colour."), alpaca_prompt("Add the numbers.", "2 and 3"), alpaca_prompt("Say hi.")]


@pytest.fixture(scope="module")
def llama_model(teacher_tokenizer):
    return tiny_causal_lm(teacher_tokenizer, family="llama").eval()


def test_left_pad_right_aligns_every_prompt():
    input_ids, attention_mask = left_pad([[5, 6, 7], [8], [9, 10]], pad_id=0)
    assert input_ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 10]]
    assert attention_mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]


def test_prompts_keep_their_first_tokens_with_the_tokenizers_bos(teacher_tokenizer):
    full = teacher_tokenizer(PROMPTS[1])["input_ids"]
    assert full[0] == teacher_tokenizer.bos_token_id and len(full) > 8
    assert encode_prompts(PROMPTS[1:2], teacher_tokenizer, 8) == [full[:8]]
    literal = encode_prompts(["an </s> inside"], teacher_tokenizer, 64)[0]
    assert teacher_tokenizer.eos_token_id not in literal


def test_chat_template_wraps_instruction_and_input(teacher_tokenizer):
    examples = [Example(PROMPTS[1], ("5",), "Add the numbers.", "2 and 3")]
    assert render_prompts(examples, teacher_tokenizer) == [PROMPTS[1]]
    with pytest.raises(ValueError, match="--chat_template: the tokenizer has no chat template"):
        render_prompts(examples, teacher_tokenizer, chat_template=True)
    templated = teacher_tokenizer.__class__.from_pretrained(teacher_tokenizer.name_or_path)
    templated.chat_template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}<|assistant|>"
    assert render_prompts(examples, templated, chat_template=True) == [
        "<|user|>Add the numbers.\n\n2 and 3<|assistant|>"
    ]


def test_sampling_config_overrides_the_checkpoints_generation_defaults(llama_model, teacher_tokenizer):
    llama_model.generation_config.top_k = 5
    llama_model.generation_config.repetition_penalty = 1.3
    llama_model.generation_config.temperature = 0.7
    config = sampling_config(llama_model, teacher_tokenizer, SETTINGS)
    assert (config.do_sample, config.temperature, config.top_p, config.top_k) == (True, 1.0, 1.0, 0)
    assert config.repetition_penalty == 1.0 and config.num_beams == 1
    assert config.max_new_tokens == 8 and config.eos_token_id == teacher_tokenizer.eos_token_id


def test_same_seed_gives_same_predictions(llama_model, teacher_tokenizer):
    prompt_ids = encode_prompts(PROMPTS, teacher_tokenizer, SETTINGS.max_prompt_length)
    first = generate_responses(llama_model, teacher_tokenizer, prompt_ids, 10, SETTINGS)
    again = generate_responses(llama_model, teacher_tokenizer, prompt_ids, 10, SETTINGS)
    other = generate_responses(llama_model, teacher_tokenizer, prompt_ids, 20, SETTINGS)
    assert len(first) == 3 and all(isinstance(text, str) for text in first)
    assert first == again
    assert first != other


def always_emitting(tokenizer, token_id):
    """A tiny LM whose head puts (numerically) all probability on `token_id`, whatever the input."""
    model = tiny_causal_lm(tokenizer, family="llama").eval()
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-100.0)
        head.bias[token_id] = 100.0
    model.lm_head = head
    return model


def test_responses_are_the_new_tokens_only_up_to_eos(teacher_tokenizer):
    prompt_ids = encode_prompts(PROMPTS, teacher_tokenizer, SETTINGS.max_prompt_length)
    blue = always_emitting(teacher_tokenizer, teacher_tokenizer.convert_tokens_to_ids("▁blue"))
    responses = generate_responses(blue, teacher_tokenizer, prompt_ids, 10, SETTINGS)
    assert responses == [" ".join(["blue"] * SETTINGS.max_new_tokens)] * len(PROMPTS)
    stop = always_emitting(teacher_tokenizer, teacher_tokenizer.eos_token_id)
    assert generate_responses(stop, teacher_tokenizer, prompt_ids, 10, SETTINGS) == [""] * len(PROMPTS)


def test_settings_are_validated():
    with pytest.raises(ValueError, match="--max_prompt_length \\(512\\) must be positive and below --max_length"):
        GenerationSettings(max_length=512, max_prompt_length=512)
    with pytest.raises(ValueError, match="--batch_size must be at least 1"):
        GenerationSettings(batch_size=0)
    assert GenerationSettings().max_new_tokens == 256
