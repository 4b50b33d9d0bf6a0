"""Load the model to evaluate: a full (or merged) checkpoint, optionally with a PEFT adapter on top."""

from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(path: str, model_path: str) -> PreTrainedTokenizerBase:
    """The tokenizer at `path`; the error names `--model_name_or_path`/`--tokenizer` so the user knows what to pass."""
    from transformers import AutoTokenizer

    fix = f"pass --tokenizer PATH when --model_name_or_path {model_path} has none"
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as error:
        raise ValueError(f"no tokenizer could be loaded from {path} ({error}); {fix}") from error
    # Without tokenizer files transformers may still build an empty tokenizer from the model config.
    if not tokenizer("Below is an instruction", add_special_tokens=False)["input_ids"]:
        raise ValueError(f"no tokenizer could be loaded from {path} (it has no vocabulary); {fix}")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model_path: str, adapter_path: str | None = None, dtype: str = "auto") -> PreTrainedModel:
    """The causal LM at `model_path` in eval mode, with the PEFT adapter at `adapter_path` applied."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=DTYPES[dtype])
    except (OSError, ValueError) as error:
        raise ValueError(f"--model_name_or_path {model_path}: no causal LM could be loaded ({error})") from error
    if adapter_path is not None:
        model = _with_adapter(model, model_path, adapter_path)
    return model.eval()


def _with_adapter(model, model_path, adapter_path):
    from peft import PeftModel

    if not (Path(adapter_path) / "adapter_config.json").is_file():
        raise ValueError(f"--adapter {adapter_path}: no adapter_config.json there (save it with save_pretrained)")
    try:
        return PeftModel.from_pretrained(model, adapter_path)
    except (RuntimeError, ValueError, KeyError) as error:
        raise ValueError(
            f"--adapter {adapter_path} does not fit --model_name_or_path {model_path}: {error}. "
            "Pass the base model the adapter was trained on."
        ) from error
