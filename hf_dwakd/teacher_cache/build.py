"""Run the teacher once over the prepared datasets and store its last hidden states at the response positions."""

import importlib.metadata
import shutil
from pathlib import Path

import torch
from accelerate import PartialState
from datasets import Dataset, concatenate_datasets
from datasets.arrow_writer import ArrowWriter
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from ..data import DistillationCollator, prepare_distillation_dataset
from ..objective.outputs import IGNORE_INDEX, no_logit_positions
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
    write_metadata,
)

SHARDS_FOLDER = ".shards"
# Config fields of known teachers whose logits are not the output layer applied to the last hidden state.
LOGIT_POSTPROCESSING_FIELDS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def build_teacher_cache(
    args,
    train_dataset: Dataset,
    eval_dataset: Dataset | dict[str, Dataset] | None = None,
    *,
    student_tokenizer,
    teacher_tokenizer=None,
    teacher_model: PreTrainedModel | str | None = None,
) -> Path:
    """Build the teacher cache `args.teacher_cache_dir` (a `DWAKDConfig`) for these datasets; returns its path.

    The datasets are prepared as `DWAKDTrainer` prepares them (the student tokenizer decides which rows survive
    truncation, so it is needed too). The teacher is `teacher_model` (a model or a name; default
    `args.teacher_model_name_or_path`), loaded with `args.teacher_model_init_kwargs`; its states are stored as
    `args.teacher_cache_dtype`, `args.per_device_eval_batch_size` examples at a time. Under `accelerate launch`
    each process runs a contiguous share of every split and the main process joins the shares.

    A folder already holding the cache of this very run is reused as it is; one holding another run's cache is
    refused. Before anything is stored, the teacher's first batch must show that its logits are its output layer
    applied to its last hidden state, which is all a cached run can recompute.
    """
    from ..trainer import _ensure_pad_token, _load_tokenizer, _teacher_init_kwargs

    cache_dir = args.teacher_cache_dir
    if cache_dir is None:
        raise ValueError("Set `teacher_cache_dir` (the folder to write the teacher cache to).")
    teacher_model = teacher_model if teacher_model is not None else args.teacher_model_name_or_path
    if teacher_model is None:
        raise ValueError("Building a teacher cache needs the teacher: set `teacher_model_name_or_path`.")
    teacher_name = teacher_model if isinstance(teacher_model, str) else teacher_model.config._name_or_path
    if teacher_tokenizer is None:
        teacher_tokenizer = _load_tokenizer(
            args.teacher_tokenizer_name_or_path or teacher_name, "teacher", "teacher_tokenizer_name_or_path"
        )
    for role, tokenizer in (("student", student_tokenizer), ("teacher", teacher_tokenizer)):
        _ensure_pad_token(tokenizer, role)

    splits = {"train": train_dataset, **split_names(eval_dataset)}
    prepared = {
        name: prepare_distillation_dataset(
            data, student_tokenizer, teacher_tokenizer, args.max_length, args.max_prompt_length, args.dataset_num_proc
        )
        for name, data in splits.items()
    }
    config = teacher_model.config if not isinstance(teacher_model, str) else AutoConfig.from_pretrained(teacher_model)
    run = describe_run(
        teacher_name, config, teacher_tokenizer, args.max_length, args.max_prompt_length, prepared
    )
    if _reusable(cache_dir, run, args.teacher_cache_dtype):
        return Path(cache_dir)

    state = PartialState()
    if isinstance(teacher_model, str):
        teacher_model = AutoModelForCausalLM.from_pretrained(teacher_model, **_teacher_init_kwargs(args))
    teacher_model.requires_grad_(False)
    teacher_model.eval().to(state.device)
    collator = DistillationCollator(student_tokenizer.pad_token_id, teacher_tokenizer.pad_token_id)
    shards = Path(cache_dir) / SHARDS_FOLDER
    shards.mkdir(parents=True, exist_ok=True)
    checked = False
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
                writer.write(_teacher_states(teacher_model, batch, args, state.device, check=not checked))
                checked = True
                progress.update(batch["teacher_input_ids"].shape[0])
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


def check_output_layer(teacher_model, logits: torch.Tensor, last_hidden: torch.Tensor) -> None:
    """Refuse a teacher whose logits are not its output layer applied to its last hidden state."""
    recomputed = teacher_model.get_output_embeddings()(last_hidden)
    if torch.allclose(recomputed.float(), logits.float(), rtol=1e-3, atol=1e-5):
        return
    config = teacher_model.config.get_text_config()
    settings = [f"{key}={getattr(config, key)}" for key in LOGIT_POSTPROCESSING_FIELDS if getattr(config, key, None)]
    reason = f"its config sets {', '.join(settings)}" if settings else "it post-processes its logits"
    raise ValueError(
        f"The teacher {config._name_or_path or type(teacher_model).__name__} cannot be cached: its logits are not "
        f"its output layer applied to its last hidden state ({reason}; largest difference "
        f"{(recomputed.float() - logits.float()).abs().max().item():.3g}). A cached run recomputes the logits that "
        "way, so it would train on other targets: train with the live teacher (leave `teacher_cache_dir` unset)."
    )


def _teacher_states(teacher_model, batch, args, device, check: bool) -> list[torch.Tensor]:
    """Each example's last hidden states at its positions whose next-token label is a response token."""
    labels = batch["teacher_labels"]
    autocast_dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None
    with torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        outputs = teacher_model(
            input_ids=batch["teacher_input_ids"].to(device),
            attention_mask=batch["teacher_attention_mask"].to(device),
            output_hidden_states=True,
            use_cache=False,
            **({} if check else {"logits_to_keep": no_logit_positions(device)}),  # only the check needs logits
        )
        last_hidden = outputs.hidden_states[-1]
        if check:
            check_output_layer(teacher_model, outputs.logits, last_hidden)
    predicts_response = (labels[:, 1:] != IGNORE_INDEX).to(device)
    return [states[:-1][mask] for states, mask in zip(last_hidden, predicts_response)]


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
