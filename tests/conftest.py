"""Pytest fixtures: the two real tokenizers of different families, MinED's vocabulary-map cache. Shared helpers live
in `testing_utils.py`."""

import os

import pytest

# Set before anything imports huggingface_hub, which reads them once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist (`-n 2`) each worker has a core of its own: one intra-op thread, so that two workers' thread
# pools do not contend for the same two cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from testing_utils import shared_tokenizers  # noqa: E402


@pytest.fixture(scope="session")
def student_tokenizer():
    return shared_tokenizers()[0]


@pytest.fixture(scope="session")
def teacher_tokenizer():
    return shared_tokenizers()[1]


@pytest.fixture(scope="session")
def mined_cache(tmp_path_factory):
    """One `mined_cache_dir` for every MinED run on the fixture tokenizers."""
    return str(tmp_path_factory.mktemp("mined-cache"))
