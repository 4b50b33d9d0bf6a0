"""Shared test fixtures: two real tokenizers of different families and tiny random causal LMs."""

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FIXTURES = Path(__file__).parent / "fixtures"
TOKENIZERS = FIXTURES / "tokenizers"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

requires_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason="../shared/data is not beside this clone"
)


def load_tokenizer(name):
    """`gpt2` (byte-level BPE, 50,257) or `llama2` (SentencePiece with byte fallback, 32,000)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZERS / name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tiny_causal_lm(tokenizer, family="llama", hidden_size=32, num_layers=1, vocab_size=None, seed=0):
    """A random-init causal LM sized for `tokenizer` (or a padded `vocab_size`), built from config."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    vocab_size = vocab_size or len(tokenizer)
    common = dict(
        vocab_size=vocab_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if family == "gpt2":
        config = GPT2Config(n_embd=hidden_size, n_layer=num_layers, n_head=2, n_positions=1024, **common)
        return GPT2LMHeadModel(config)
    config = LlamaConfig(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        **common,
    )
    return LlamaForCausalLM(config)


def logits_side(logits, labels, vocab_size=None):
    """A `SideOutputs` holding only logits (with gradient) and labels; hidden states and embeddings are zeros."""
    from hf_dwakd.objective.outputs import SideOutputs

    logits = torch.as_tensor(logits, dtype=torch.float32)
    batch, length, width = logits.shape
    return SideOutputs(
        logits=logits.clone().requires_grad_(True),
        hidden=torch.zeros(batch, length, 2, requires_grad=True),
        input_embeds=torch.zeros(batch, length, 2),
        target_embeds=torch.zeros(batch, length, 2),
        labels=torch.as_tensor(labels),
        lm_head_weight=torch.zeros(width, 2),
        vocab_size=vocab_size or width,
    )


@pytest.fixture(scope="session")
def student_tokenizer():
    return load_tokenizer("gpt2")


@pytest.fixture(scope="session")
def teacher_tokenizer():
    return load_tokenizer("llama2")
