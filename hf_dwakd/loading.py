"""Loading models, tokenizers and adapters: the one place the trainer, the teacher cache, `inspect`, evaluation
and the benchmarks read them from a name or a folder.

    from hf_dwakd.loading import load_tokenizer, load_causal_lm, load_model, load_teacher

- `load_tokenizer`: a tokenizer that can pad (its EOS token when it has no pad token, with a warning);
- `load_causal_lm`: a causal LM from a name, `init_kwargs` as `from_pretrained` takes them (a dtype may be a name);
- `load_model`: a causal LM in eval mode, or a PEFT adapter folder with its base model, or a base model with an
  adapter on top (evaluation);
- `teacher_init_kwargs` / `load_teacher`: the teacher as `DWAKDConfig` says to load it.

Every error names what to pass instead.
"""

import warnings
from pathlib import Path

import torch

DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ADAPTER_CONFIG_NAME = "adapter_config.json"


def load_tokenizer(name_or_path, *, role: str = "model", fix: str | None = None, trust_remote_code: bool = False):
    """The tokenizer at `name_or_path`, able to pad. `role` ("student", "teacher") and `fix` (what the user should
    pass instead) go into the error when there is none."""
    from transformers import AutoTokenizer

    fix = fix or f"pass the {role}'s tokenizer"
    if name_or_path is None:
        raise ValueError(f"Cannot tell which tokenizer the {role} uses: {fix}.")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as error:
        message = f"no tokenizer could be loaded for the {role} from {name_or_path} ({error}); {fix}"
        raise ValueError(message) from error
    # Without tokenizer files transformers may still build an empty tokenizer from the model config.
    if not tokenizer("Below is an instruction", add_special_tokens=False)["input_ids"]:
        raise ValueError(f"no tokenizer could be loaded for the {role} from {name_or_path} (no vocabulary); {fix}")
    ensure_pad_token(tokenizer, role)
    return tokenizer


def ensure_pad_token(tokenizer, role: str = "model") -> None:
    """Give a tokenizer without a pad token its EOS token for padding (padding is masked out of every loss)."""
    if tokenizer.pad_token is not None:
        return
    if tokenizer.eos_token is None:
        raise ValueError(
            f"The {role} tokenizer ({tokenizer.name_or_path}) has neither a pad nor an EOS token: set "
            "`tokenizer.pad_token` before building the trainer."
        )
    warnings.warn(
        f"The {role} tokenizer ({tokenizer.name_or_path}) has no pad token; using its EOS token "
        f"{tokenizer.eos_token!r} for padding (padding is masked out of every loss)."
    )
    tokenizer.pad_token = tokenizer.eos_token


def model_init_kwargs(kwargs: dict | None, trust_remote_code: bool = False) -> dict:
    """`from_pretrained` keyword arguments: a dtype given by name becomes the torch dtype; `trust_remote_code`
    unless the kwargs say otherwise."""
    kwargs = dict(kwargs or {})
    dtype = kwargs.get("dtype")
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is not one of {tuple(DTYPES)}.")
        kwargs["dtype"] = DTYPES[dtype]
    kwargs.setdefault("trust_remote_code", trust_remote_code)
    return kwargs


def teacher_init_kwargs(args) -> dict:
    """How `DWAKDConfig` `args` loads the teacher from its name (`teacher_model_init_kwargs`, `trust_remote_code`)."""
    return model_init_kwargs(args.teacher_model_init_kwargs, args.trust_remote_code)


def load_causal_lm(name_or_path, *, role: str = "model", **init_kwargs):
    """The causal LM at `name_or_path`; `init_kwargs` go to `from_pretrained` (through `model_init_kwargs`)."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(str(name_or_path), **model_init_kwargs(init_kwargs))
    except (OSError, ValueError) as error:
        raise ValueError(f"no causal LM could be loaded for the {role} from {name_or_path} ({error})") from error


def load_teacher(name_or_path, args):
    """The teacher `args` (a `DWAKDConfig`) names, loaded with its `teacher_model_init_kwargs`."""
    return load_causal_lm(name_or_path, role="teacher", **teacher_init_kwargs(args))


def is_adapter_folder(path) -> bool:
    return (Path(path) / ADAPTER_CONFIG_NAME).is_file()


def load_model(model_path, adapter_path=None, dtype: str = "auto"):
    """A model to run in eval mode: the causal LM at `model_path` (a PEFT adapter folder brings its base model),
    with the PEFT adapter at `adapter_path` applied on top when given."""
    if is_adapter_folder(model_path):
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(str(model_path), dtype=DTYPES[dtype])
    else:
        try:
            model = load_causal_lm(model_path, dtype=dtype)
        except ValueError as error:
            raise ValueError(f"--model_name_or_path {model_path}: {error}") from error
    if adapter_path is not None:
        model = _with_adapter(model, model_path, adapter_path)
    return model.eval()


def _with_adapter(model, model_path, adapter_path):
    from peft import PeftModel

    if not is_adapter_folder(adapter_path):
        raise ValueError(f"--adapter {adapter_path}: no {ADAPTER_CONFIG_NAME} there (save it with save_pretrained)")
    try:
        return PeftModel.from_pretrained(model, adapter_path)
    except (RuntimeError, ValueError, KeyError) as error:
        raise ValueError(
            f"--adapter {adapter_path} does not fit --model_name_or_path {model_path}: {error}. "
            "Pass the base model the adapter was trained on."
        ) from error
