"""Pytest fixtures: the two real tokenizers of different families. Shared helpers live in `testing_utils.py`."""

import os

import pytest

# Set before anything imports huggingface_hub, which reads them once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from testing_utils import load_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def student_tokenizer():
    return load_tokenizer("gpt2")


@pytest.fixture(scope="session")
def teacher_tokenizer():
    return load_tokenizer("llama2")
