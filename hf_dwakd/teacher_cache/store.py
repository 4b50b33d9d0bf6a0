"""The teacher cache on disk: what it was built from, how states are stored, and how a run reads it.

A cache folder holds `metadata.json` (written last: a folder without it is an unfinished build) and one saved
`datasets` dataset per split (`train`, `eval` or `eval_<name>`). Row k of a split is row k of the prepared dataset
(`prepare_distillation_dataset`); its one column `teacher_hidden` is an Arrow `Array2D` of shape
(response positions, d_t): the teacher's last hidden state at each position i whose next-token label
`teacher_labels[i + 1]` is a response token, in position order. Arrow has no bfloat16, so a bfloat16 cache stores
the states' bit patterns as uint16 (`states_from_storage` views them back); float16 and float32 are stored as is.
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import torch
from datasets import Array2D, Dataset, Features, concatenate_datasets, load_from_disk

from ..data.collator import HIDDEN_SUFFIX
from ..data.collator import TEACHER_HIDDEN_COLUMN as HIDDEN_COLUMN

METADATA_NAME = "metadata.json"
CACHE_FORMAT = "hf_dwakd-teacher-cache-v2"
# The `teacher_cache_dtype` choices and the Arrow type each is stored as.
STORAGE_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "uint16"}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# Config entries that say how a model was loaded or saved, not what it computes.
_VOLATILE_CONFIG_KEYS = {"_name_or_path", "transformers_version", "dtype", "torch_dtype", "use_cache"}
# The fields a run must share with the cache, in the order they are checked, with the option that sets each.
RUN_FIELDS = {
    "teacher_name_or_path": "teacher_model_name_or_path",
    "teacher_config": "the teacher's config.json",
    "teacher_weights": "the teacher's weights (retrained in place, another revision or another model object?)",
    "teacher_tokenizer": "teacher_tokenizer_name_or_path",
    "max_length": "max_length",
    "max_prompt_length": "max_prompt_length",
}


def split_names(eval_dataset) -> dict:
    """`{split name: dataset}` for the eval argument of a trainer: a dataset, a dict of them, or None."""
    if eval_dataset is None:
        return {}
    if isinstance(eval_dataset, dict):
        return {f"eval_{key}": dataset for key, dataset in eval_dataset.items()}
    return {"eval": eval_dataset}


def describe_run(
    teacher_name,
    teacher_config,
    teacher_weights,
    teacher_tokenizer,
    max_length,
    max_prompt_length,
    splits,
    prefix: str = "teacher_",
) -> dict:
    """What a cache must have been built from to serve this run; `teacher_weights` is `weights_identity`'s,
    `splits` are the prepared datasets by name, `prefix` the teacher's columns in them."""
    return {
        "teacher_name_or_path": _normalised_name(teacher_name),
        "teacher_config": _config_hash(teacher_config),
        "teacher_weights": teacher_weights,
        "teacher_tokenizer": _tokenizer_hash(teacher_tokenizer),
        "max_length": max_length,
        "max_prompt_length": max_prompt_length,
        "splits": {
            name: {"fingerprint": data_fingerprint(data, prefix), "rows": len(data)} for name, data in splits.items()
        },
    }


def weights_identity(teacher, revision: str | None = None) -> str:
    """What the teacher's weights are: a hash of the state dict of a model object, a hash of the weight files'
    contents in a local folder, or the commit (else the revision) of a Hub id."""
    if isinstance(teacher, torch.nn.Module):
        digest = hashlib.sha256()
        for name, tensor in sorted(teacher.state_dict().items()):
            tensor = tensor.detach().to("cpu").contiguous()
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        return f"state dict sha256:{digest.hexdigest()}"
    folder = Path(os.path.expanduser(str(teacher)))
    if folder.is_dir():
        files = sorted(path for path in folder.iterdir() if path.suffix in WEIGHT_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"The teacher folder {folder} holds no weight files ({WEIGHT_SUFFIXES}).")
        digest = hashlib.sha256()
        for path in files:
            digest.update(path.name.encode())
            with open(path, "rb") as file:
                while block := file.read(1 << 24):
                    digest.update(block)
        return f"files sha256:{digest.hexdigest()}"
    return f"hub {teacher}@{_hub_commit(str(teacher), revision) or revision or 'main'}"


def data_fingerprint(prepared: Dataset, prefix: str = "teacher_") -> str:
    """A hash of one teacher's side of a prepared dataset (token ids and labels of every row, in order, in the
    columns starting with `prefix`): it changes with the data, its order, the teacher tokenizer, the lengths and
    the rows the preparation drops (with several teachers, every tokenizer takes part in truncation)."""
    digest = hashlib.sha256()
    columns = [f"{prefix}input_ids", f"{prefix}labels"]
    for table in prepared.select_columns(columns).with_format("arrow").iter(batch_size=10_000):
        for name in columns:
            column = table.column(name)
            digest.update(np.asarray(pc.list_value_length(column)).tobytes())
            digest.update(np.asarray(pc.list_flatten(column)).tobytes())
    return digest.hexdigest()


def read_metadata(cache_dir) -> dict | None:
    path = Path(cache_dir) / METADATA_NAME
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def write_metadata(cache_dir, metadata: dict) -> None:
    path = Path(cache_dir) / METADATA_NAME
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(metadata, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(temporary, path)  # the metadata appears whole, after every split


def first_difference(cached: dict, run: dict, cache_dir) -> str | None:
    """A sentence naming the first field in which `run` (a `describe_run`) differs from the cache, or None."""
    for key, option in RUN_FIELDS.items():
        if cached[key] != run[key]:
            return (
                f"The teacher cache {cache_dir} was built with another {key} ({option}): cache {cached[key]!r}, "
                f"this run {run[key]!r}."
            )
    for name, split in run["splits"].items():
        if name not in cached["splits"]:
            return (
                f"The teacher cache {cache_dir} holds no {name!r} split (it has {sorted(cached['splits'])}): "
                f"build it with this run's {'eval' if name.startswith('eval') else 'training'} data."
            )
        if cached["splits"][name] != split:
            return (
                f"The teacher cache {cache_dir} was built from other {name!r} data (dataset fingerprint "
                f"{cached['splits'][name]['fingerprint'][:12]}, {cached['splits'][name]['rows']} rows; this run's "
                f"is {split['fingerprint'][:12]}, {split['rows']} rows): the rows, their text or their order differ."
            )
    return None


def check_cache_matches(cache_dir, run: dict) -> dict:
    """The cache's metadata, after refusing a missing, unfinished or stale cache."""
    cached = read_metadata(cache_dir)
    if cached is None:
        raise FileNotFoundError(
            f"teacher_cache_dir={cache_dir} holds no finished teacher cache ({METADATA_NAME} is missing): build it "
            "first with `hf-dwakd cache-teacher --config RECIPE` (or `build_teacher_cache`)."
        )
    if cached.get("format") != CACHE_FORMAT:
        raise ValueError(
            f"teacher_cache_dir={cache_dir} has format {cached.get('format')!r}, this version reads {CACHE_FORMAT!r}: "
            "build the cache again."
        )
    difference = first_difference(cached, run, cache_dir)
    if difference is not None:
        raise ValueError(f"{difference} Build the cache again for this run, or point teacher_cache_dir elsewhere.")
    return cached


def join_cached_states(prepared: Dataset, cache_dir, split: str, prefix: str = "teacher_") -> Dataset:
    """The prepared dataset with the cached states as the teacher's `<prefix>hidden` column (`teacher_hidden`),
    read as numpy arrays in their stored dtype (the other columns stay Python lists, as the collator expects)."""
    column = prefix + HIDDEN_SUFFIX
    states = load_from_disk(str(Path(cache_dir) / split))
    if column != HIDDEN_COLUMN:
        states = states.rename_column(HIDDEN_COLUMN, column)
    joined = concatenate_datasets([prepared, states], axis=1)
    numpy_columns = [name for name in joined.column_names if name.endswith(HIDDEN_SUFFIX)]
    return joined.with_format("numpy", columns=numpy_columns, output_all_columns=True, dtype=None)


def states_features(hidden_size: int, dtype: str) -> Features:
    return Features({HIDDEN_COLUMN: Array2D(shape=(None, hidden_size), dtype=STORAGE_DTYPES[dtype])})


def states_to_storage(states: torch.Tensor, dtype: str) -> np.ndarray:
    """(n, d) states of any float dtype -> the numpy array stored for `dtype`; refuses states that overflow it."""
    converted = states.detach().to(device="cpu", dtype=getattr(torch, dtype))
    if not bool(converted.isfinite().all()) and bool(states.isfinite().all()):
        raise ValueError(
            f"The teacher's last hidden states reach {states.abs().max().item():.4g}, beyond the largest {dtype} "
            f"({torch.finfo(converted.dtype).max:.4g}): a {dtype} cache would hold infinities. Set "
            "`teacher_cache_dtype` to 'bfloat16' or 'float32'."
        )
    if dtype == "bfloat16":
        converted = converted.view(torch.uint16)
    return converted.numpy()


def states_from_storage(stored: torch.Tensor) -> torch.Tensor:
    """Stored states (a batch of them, any shape) -> a float tensor; uint16 holds bfloat16 bit patterns."""
    return stored.view(torch.bfloat16) if stored.dtype == torch.uint16 else stored


def _hub_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit a Hub id's revision resolves to in the local Hub cache, or None when it is not there."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    if not isinstance(path, str):
        return None
    return Path(path).parent.name  # .../snapshots/<commit>/config.json


def _normalised_name(name):
    if name and os.path.exists(os.path.expanduser(str(name))):
        return os.path.realpath(os.path.expanduser(str(name)))
    return name


def _config_hash(config) -> str:
    entries = {key: value for key, value in config.to_dict().items() if key not in _VOLATILE_CONFIG_KEYS}
    return hashlib.sha256(json.dumps(entries, sort_keys=True, default=str).encode()).hexdigest()


def _tokenizer_hash(tokenizer) -> str:
    vocabulary = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    described = (len(tokenizer), vocabulary, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.chat_template)
    return hashlib.sha256(repr(described).encode("utf-8")).hexdigest()
