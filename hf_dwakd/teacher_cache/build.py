"""Run the teacher once over the prepared datasets and store its last hidden states at the response positions."""

import importlib.metadata
import shutil
from pathlib import Path

import torch
from accelerate import PartialState
from datasets import Dataset, concatenate_datasets
from datasets.arrow_writer import ArrowWriter
from tqdm.auto import tqdm
from transformers import AutoConfig, PreTrainedModel

from ..data import DistillationCollator, prepare_distillation_dataset
from ..loading import ensure_pad_token, load_teacher, load_tokenizer
from ..model_side import ModelSide
from ..teacher_list import per_teacher, teacher_count, teacher_prefix
from .store import (
    CACHE_FORMAT,
    HIDDEN_COLUMN,
    STORAGE_DTYPES,
    describe_run,
    first_difference,
    read_metadata,
    split_names,
    states_features,
    states_to_storage,
    weights_identity,
    write_metadata,
)

SHARDS_FOLDER = ".shards"


def build_teacher_cache(
    args,
    train_dataset: Dataset,
    eval_dataset: Dataset | dict[str, Dataset] | None = None,
    *,
    student_tokenizer,
    teacher_tokenizer=None,
    teacher_model: PreTrainedModel | str | list | None = None,
) -> Path | list[Path | None]:
    """Build the teacher cache `args.teacher_cache_dir` (a `DWAKDConfig`) for these datasets; returns its path.

    The datasets are prepared as `DWAKDTrainer` prepares them (the student tokenizer decides which rows survive
    truncation, so it is needed too). The teacher is `teacher_model` (a model or a name; default
    `args.teacher_model_name_or_path`), loaded with `args.teacher_model_init_kwargs`; its states are stored as
    `args.teacher_cache_dtype`, `args.per_device_eval_batch_size` examples at a time. Under `accelerate launch`
    each process runs a contiguous share of every split and the main process joins the shares.

    Several teachers (lists of models, tokenizers and cache folders, one entry each): the data is prepared with
    every teacher's tokenizer, as the trainer does, and each teacher with a folder gets its own cache there; the
    result is the list of paths (None for a teacher without a folder, which trains live).

    A folder already holding the cache of this very run is reused as it is; one holding another run's cache is
    refused. Before anything is stored, the teacher's first batch must show that its logits are its output layer
    applied to its last hidden state, which is all a cached run can recompute.
    """
    teacher_model = teacher_model if teacher_model is not None else args.teacher_model_name_or_path
    if teacher_model is None:
        raise ValueError("Building a teacher cache needs the teacher: set `teacher_model_name_or_path`.")
    count = teacher_count(teacher_model)
    args.check_teachers(count, "`teacher_model`" if count > 1 else "`teacher_model_name_or_path`")
    cache_dirs = per_teacher(args.teacher_cache_dir, count)
    if all(cache_dir is None for cache_dir in cache_dirs):
        raise ValueError("Set `teacher_cache_dir` (the folder to write the teacher cache to).")
    teacher_models = per_teacher(teacher_model, count)
    teacher_tokenizers = per_teacher(teacher_tokenizer, count)
    tokenizer_names = per_teacher(args.teacher_tokenizer_name_or_path, count)
    for index, model in enumerate(teacher_models):
        if teacher_tokenizers[index] is None:
            teacher_tokenizers[index] = load_tokenizer(
                tokenizer_names[index] or (model if isinstance(model, str) else model.config._name_or_path),
                role="teacher",
                fix="set `teacher_tokenizer_name_or_path`",
                trust_remote_code=args.trust_remote_code,
            )
    for role, tokenizer in (("student", student_tokenizer), *(("teacher", t) for t in teacher_tokenizers)):
        ensure_pad_token(tokenizer, role)

    splits = {"train": train_dataset, **split_names(eval_dataset)}
    prepared = {
        name: prepare_distillation_dataset(
            data,
            student_tokenizer,
            teacher_tokenizers if count > 1 else teacher_tokenizers[0],
            args.max_length,
            args.max_prompt_length,
            args.dataset_num_proc,
        )
        for name, data in splits.items()
    }
    collator = DistillationCollator(student_tokenizer.pad_token_id, [t.pad_token_id for t in teacher_tokenizers])
    paths = [
        None
        if cache_dir is None
        else _build_one(args, cache_dir, model, tokenizer, teacher_prefix(index), prepared, collator)
        for index, (cache_dir, model, tokenizer) in enumerate(zip(cache_dirs, teacher_models, teacher_tokenizers))
    ]
    return paths[0] if count == 1 else paths


def _build_one(args, cache_dir, teacher_model, teacher_tokenizer, prefix, prepared, collator) -> Path:
    """One teacher's cache in `cache_dir`, from the `prepared` splits (its columns start with `prefix`)."""
    teacher_name = teacher_model if isinstance(teacher_model, str) else teacher_model.config._name_or_path
    revision = (args.teacher_model_init_kwargs or {}).get("revision")
    if isinstance(teacher_model, str):
        config = AutoConfig.from_pretrained(teacher_model, revision=revision, trust_remote_code=args.trust_remote_code)
    else:
        config = teacher_model.config
    weights = weights_identity(teacher_model, revision)
    run = describe_run(
        teacher_name, config, weights, teacher_tokenizer, args.max_length, args.max_prompt_length, prepared, prefix
    )
    if _reusable(cache_dir, run, args.teacher_cache_dtype):
        return Path(cache_dir)

    state = PartialState()
    if isinstance(teacher_model, str):
        teacher_model = load_teacher(teacher_model, args)
    teacher_model.requires_grad_(False)
    teacher_model.eval().to(state.device)
    autocast_dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None
    # Each process runs its own copy of the teacher: no decision needs agreeing. Padded forwards: a packed
    # sequence's length depends on which rows share a batch, which changes the rounding, and the cache must not
    # depend on how many processes built it.
    teacher = ModelSide(
        "teacher",
        len(teacher_tokenizer),
        prefix=prefix,
        model=teacher_model,
        unpadded_forward=False,
        across_processes=False,
        autocast=lambda: torch.autocast(state.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None),
    )
    shards = Path(cache_dir) / SHARDS_FOLDER
    shards.mkdir(parents=True, exist_ok=True)
    for name, data in prepared.items():
        start, end = shard_range(len(data), state.num_processes, state.process_index)
        writer = _StatesWriter(shards / f"{name}-{state.process_index:05d}.arrow", config, args.teacher_cache_dtype)
        loader = torch.utils.data.DataLoader(
            data.select(range(start, end)), batch_size=args.per_device_eval_batch_size, collate_fn=collator
        )
        progress = tqdm(
            total=end - start, unit="example", desc=f"Teacher states ({name})", disable=not state.is_main_process
        )
        with writer, progress:
            for batch in loader:
                writer.write(_teacher_states(teacher, batch, state.device))
                progress.update(batch[f"{prefix}input_ids"].shape[0])
    state.wait_for_everyone()
    if state.is_main_process:
        _join_shards(cache_dir, prepared, state.num_processes)
        metadata = {
            **run,
            "format": CACHE_FORMAT,
            "dtype": args.teacher_cache_dtype,
            "storage": f"{STORAGE_DTYPES[args.teacher_cache_dtype]} ({HIDDEN_COLUMN}: Array2D (positions, d))",
            "teacher_hidden_size": config.get_text_config().hidden_size,
            "teacher_tokenizer_name_or_path": teacher_tokenizer.name_or_path,
            "package_version": importlib.metadata.version("hf_dwakd"),
        }
        write_metadata(cache_dir, metadata)
    state.wait_for_everyone()
    return Path(cache_dir)


def shard_range(num_rows: int, num_shards: int, index: int) -> tuple[int, int]:
    """`[start, end)` of shard `index`: contiguous, in order, sizes differing by at most one."""
    return index * num_rows // num_shards, (index + 1) * num_rows // num_shards


def _teacher_states(teacher: ModelSide, batch, device) -> list[torch.Tensor]:
    """Each example's last hidden states at its positions whose next-token label is a response token.

    Before the first batch is stored, refuses a teacher whose logits are not its output layer applied to its last
    hidden state: a cached run recomputes the logits that way, so it would train on other targets."""
    batch = {key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()}
    if teacher.mode is None:
        mode = teacher.settle(
            teacher.model, batch[f"{teacher.prefix}input_ids"], batch[f"{teacher.prefix}attention_mask"]
        )
        if not mode.rows_only:
            config = teacher.model.config.get_text_config()
            raise ValueError(
                f"The teacher {config._name_or_path or type(teacher.model).__name__} cannot be cached: its logits "
                f"are not its output layer applied to its last hidden state ({mode.full_logits_reason}). A cached "
                "run recomputes the logits that way, so it would train on other targets: train with the live "
                "teacher (leave `teacher_cache_dir` unset)."
            )
    with torch.no_grad():
        side, _ = teacher(batch)
    return [states[mask] for states, mask in zip(side.hidden, side.response_mask)]


class _StatesWriter:
    """Appends examples' states to one Arrow file of the cache's features."""

    def __init__(self, path: Path, config, dtype: str):
        self.dtype = dtype
        self._writer = ArrowWriter(features=states_features(config.get_text_config().hidden_size, dtype), path=path)

    def write(self, states: list[torch.Tensor]) -> None:
        self._writer.write_batch({HIDDEN_COLUMN: [states_to_storage(rows, self.dtype) for rows in states]})

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._writer.finalize()
        self._writer.close()


def _join_shards(cache_dir, prepared: dict[str, Dataset], num_shards: int) -> None:
    shards = Path(cache_dir) / SHARDS_FOLDER
    for name, data in prepared.items():
        parts = [Dataset.from_file(str(shards / f"{name}-{index:05d}.arrow")) for index in range(num_shards)]
        joined = concatenate_datasets(parts)
        if len(joined) != len(data):
            raise RuntimeError(f"The {name!r} split has {len(joined)} cached rows for {len(data)} examples.")
        target = Path(cache_dir) / name
        shutil.rmtree(target, ignore_errors=True)
        joined.save_to_disk(str(target))
    shutil.rmtree(shards)


def _reusable(cache_dir, run: dict, dtype: str) -> bool:
    """True when `cache_dir` already holds this run's cache in `dtype`; refuses another run's cache."""
    cached = read_metadata(cache_dir)
    if cached is None:
        return False
    difference = first_difference(cached, run, cache_dir)
    if difference is None and cached["dtype"] != dtype:
        difference = f"The teacher cache {cache_dir} stores {cached['dtype']}, not teacher_cache_dtype={dtype!r}."
    if difference is not None:
        raise ValueError(f"{difference} Delete that folder or choose another teacher_cache_dir to build this cache.")
    return True
