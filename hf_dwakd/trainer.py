"""`DWAKDTrainer`: TRL's `SFTTrainer` with a frozen teacher of another tokenizer and the DWA-KD objective.

The trainer only wires things together: the two-tokenizer data pipeline (`data/`), one `ModelSide` per model
turning batches into the objective's inputs (`model_side.py`), the projectors (`projectors.py`), the objective
(`objective/`, `methods.py`). The projectors are registered inside the student module so that
DDP all-reduces them and DeepSpeed steps them; they are saved beside the student as `projectors.safetensors`.
"""

import os
import textwrap
import time
import warnings

import torch
from datasets import Dataset
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils import logging
from trl import SFTTrainer
from trl.models import prepare_deepspeed, prepare_fsdp

from .config import DWAKDConfig
from .data import PROMPT_COLUMN, DistillationCollator, check_dataset_columns, prepare_distillation_dataset
from .fsdp2 import gathered_roots, load_full_state, shard_teacher
from .inspection import AlignmentPlotCallback
from .loading import ensure_pad_token, load_teacher, load_tokenizer, teacher_init_kwargs
from .methods import TeacherOutputs, metric_name, several_teachers_loss, teacher_loss
from .model_card import complete_trainer_card, read_card
from .model_side import ModelSide, whole_weight
from .on_policy import METRIC_PREFIXES, SAMPLED_BY, STUDENT, TEACHER, ResponseSampler
from .projector_init import TokenBytes, calibration_share, fit_aligned_projectors, pseudo_inverse_s2t
from .projectors import PROJECTORS_NAME, DWAKDProjectors, projectors_file_name
from .registry import get_method
from .teacher_cache import CachedTeacherSide, LightTeacher, load_light_teacher
from .teacher_cache.store import (
    check_cache_matches,
    describe_run,
    join_cached_states,
    read_metadata,
    split_names,
    weights_identity,
)
from .teacher_list import normalised_weights, per_teacher, single_or_list, teacher_names, teacher_prefix
from .teacher_role import TeacherRole

logger = logging.get_logger(__name__)

PROJECTORS_ATTRIBUTE = "dwakd_projectors"
STUDENT_COLUMNS = ["input_ids", "attention_mask", "labels"]
# Each teacher's, after its column prefix; `hidden` only in datasets joined with a teacher cache.
TEACHER_COLUMNS = ["input_ids", "attention_mask", "labels", "hidden"]


class DWAKDTrainer(SFTTrainer):
    """Distil `teacher_model` into `model` across different tokenizers with DWA-KD (arXiv 2602.21669), or with
    one of the baselines `args.kd_method` names (registered in `registry.py`).

    Takes `SFTTrainer`'s arguments plus:
        teacher_model (`PreTrainedModel` or `str`, *optional*): the frozen teacher, or its name (default:
            `args.teacher_model_name_or_path`).
        teacher_processing_class (`PreTrainedTokenizerBase`, *optional*): the teacher's tokenizer (default:
            `args.teacher_tokenizer_name_or_path`, then the teacher's name).
    Datasets may be prompt-completion, conversational or DSKD jsonl (`prompt`, `output`); each example is tokenized
    by both tokenizers.
    """

    _tag_names = ["trl", "dwa-kd", "distillation"]
    _name = "DWA-KD"
    _paper = {
        "title": "DWA-KD: Dual-Space Weighting and Time-Warped Alignment for Cross-Tokenizer Knowledge Distillation",
        "id": "2602.21669",
        "citation": textwrap.dedent("""\
            @inproceedings{vu2026dwakd,
                title     = {{DWA-KD: Dual-Space Weighting and Time-Warped Alignment for Cross-Tokenizer Knowledge
                             Distillation}},
                author    = {Vu and Chi and Van and Ngo Van and Dinh and Le},
                booktitle = {Findings of the Association for Computational Linguistics: EACL 2026},
                year      = 2026,
                eprint    = {2602.21669},
                archivePrefix = {arXiv},
            }"""),
    }

    def __init__(
        self,
        model: PreTrainedModel | str,
        teacher_model: PreTrainedModel | str | None = None,
        args: DWAKDConfig | None = None,
        data_collator=None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        teacher_processing_class: PreTrainedTokenizerBase | None = None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        preprocess_logits_for_metrics=None,
        peft_config=None,
    ):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = DWAKDConfig(f"{str(name).split('/')[-1]}-DWAKD")
        elif not isinstance(args, DWAKDConfig):
            raise TypeError(
                f"`args` must be a DWAKDConfig, got {type(args).__name__}: build one with DWAKDConfig(...)."
            )
        if train_dataset is None:
            raise ValueError("`train_dataset` is required.")

        # Everything cheap is checked before any model or tokenizer is loaded.
        teacher_models = _resolve_teacher_argument(teacher_model, args)
        count = len(teacher_models)
        eval_datasets = list(eval_dataset.values()) if isinstance(eval_dataset, dict) else [eval_dataset]
        for dataset in [train_dataset, *eval_datasets]:
            if dataset is not None:
                check_dataset_columns(dataset.column_names)
        if peft_config is not None and _is_peft_model(model):
            raise ValueError(
                "You passed a `PeftModel` together with a `peft_config`: pass the base model with the `peft_config`, "
                "or the `PeftModel` without one."
            )
        if count > 1 and not isinstance(teacher_processing_class, (list, tuple, type(None))):
            raise ValueError(
                f"`teacher_processing_class` is one tokenizer for {count} teachers: pass a list of one tokenizer "
                "per teacher (None entries load the teacher's own)."
            )
        if count and isinstance(teacher_processing_class, (list, tuple)) and len(teacher_processing_class) != count:
            raise ValueError(
                f"`teacher_processing_class` has {len(teacher_processing_class)} tokenizers but {count} teacher(s) "
                "are given: pass one tokenizer per teacher, in the teachers' order (None loads the teacher's own)."
            )

        student_tokenizer = processing_class or load_tokenizer(
            _name_of(model), role="student", fix="pass `processing_class`", trust_remote_code=args.trust_remote_code
        )
        tokenizer_names = per_teacher(args.teacher_tokenizer_name_or_path, count)
        teacher_tokenizers = [
            given
            or load_tokenizer(
                tokenizer_name or _name_of(teacher),
                role="teacher",
                fix="pass `teacher_processing_class` or `teacher_tokenizer_name_or_path`",
                trust_remote_code=args.trust_remote_code,
            )
            for given, tokenizer_name, teacher in zip(
                per_teacher(teacher_processing_class, count), tokenizer_names, teacher_models
            )
        ]
        if not teacher_tokenizers:  # no teacher: the teacher columns repeat the student's
            teacher_tokenizers = [student_tokenizer]
        for role, tokenizer in (("student", student_tokenizer), *(("teacher", t) for t in teacher_tokenizers)):
            ensure_pad_token(tokenizer, role)

        prepare = dict(
            student_tokenizer=student_tokenizer,
            teacher_tokenizer=teacher_tokenizers if count > 1 else teacher_tokenizers[0],
            max_length=args.max_length,
            max_prompt_length=args.max_prompt_length,
            num_proc=args.dataset_num_proc,
        )
        train_dataset = prepare_distillation_dataset(train_dataset, **prepare, keep_prompts=args.samples_responses)
        if isinstance(eval_dataset, dict):
            eval_dataset = {key: prepare_distillation_dataset(ds, **prepare) for key, ds in eval_dataset.items()}
        elif eval_dataset is not None:
            eval_dataset = prepare_distillation_dataset(eval_dataset, **prepare)
        cache_dirs = per_teacher(args.teacher_cache_dir, count) if count else []
        for index, cache_dir in enumerate(cache_dirs):
            if cache_dir is not None:  # refused here, before any model is loaded, when it belongs to another run
                train_dataset, eval_dataset = _with_cached_states(
                    args,
                    teacher_models[index],
                    teacher_tokenizers[index],
                    train_dataset,
                    eval_dataset,
                    cache_dir,
                    teacher_prefix(index),
                )
        args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
        if data_collator is None:
            pad_ids = [tokenizer.pad_token_id for tokenizer in teacher_tokenizers]
            data_collator = DistillationCollator(
                student_tokenizer.pad_token_id, pad_ids if count > 1 else pad_ids[0], args.pad_to_multiple_of
            )

        names = teacher_names([_name_of(teacher) for teacher in teacher_models])
        for index, (teacher, cache_dir) in enumerate(zip(teacher_models, cache_dirs)):
            if cache_dir is not None:
                teacher_models[index] = (
                    load_light_teacher(teacher, **teacher_init_kwargs(args))
                    if isinstance(teacher, str)
                    else LightTeacher.from_model(teacher)
                )
            elif isinstance(teacher, str):
                teacher_models[index] = load_teacher(teacher, args)

        super().__init__(
            model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=student_tokenizer,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
            peft_config=peft_config,
        )
        self.student_vocab_size = len(student_tokenizer)
        # Our loss is already normalised by the accumulated token count; make Trainer count them and not rescale.
        self.model_accepts_loss_kwargs = True
        self.loss_is_scaled_for_ga = True

        # Each role turns a batch into its `SideOutputs`; each settles its forward on its first batch.
        side_options = dict(
            unwrap=self.accelerator.unwrap_model,
            autocast=self.accelerator.autocast,
            full_weight=self._full_lm_head_weight,
            unpadded_forward=args.unpadded_forward,
            output_layer_hooks=not self.accelerator.is_fsdp2,
        )
        self.student_side = ModelSide("student", self.student_vocab_size, **side_options)
        self.distillation_method = get_method(args.kd_method)
        weights = normalised_weights(args.teacher_weights, count) if count else []
        self.teachers = [
            self._teacher_role(*entry, side_options)
            for entry in zip(range(count), names, weights, teacher_models, teacher_tokenizers, cache_dirs)
        ]
        if args.needs_projectors:
            self._attach_projectors(self.teachers)
        self._projectors_started = False  # `start_projectors` runs once per trainer
        # The single teacher's attributes (the first teacher's with several).
        first = self.teachers[0] if self.teachers else None
        self.teacher_processing_class = first.tokenizer if first else student_tokenizer
        self.teacher_vocab_size = len(self.teacher_processing_class)
        self.teacher_model = first.model if first else None
        self.cached_teacher = first.cached if first else None  # a `LightTeacher` when its states come from a cache
        self.teacher_side = first.side if first else None
        self.aligner = first.aligner if first else None
        if args.alignment_plot_steps:
            self.add_callback(AlignmentPlotCallback(self))
        self.response_sampler = None  # set when some steps train on sampled responses (`lmbda`, `seq_kd`)
        if args.samples_responses:
            self.response_sampler = ResponseSampler(
                args, student_tokenizer, self.teacher_processing_class, self.data_collator
            )

    # ---- setup -------------------------------------------------------------------------------------------------

    def _prepare_teacher(self, teacher_model):
        """Place the teacher like the student: sharded under ZeRO-3/FSDP, replicated otherwise."""
        if self.is_deepspeed_enabled:
            return prepare_deepspeed(teacher_model, self.accelerator)
        if self.is_fsdp_enabled:
            if self.accelerator.state.fsdp_plugin.fsdp_version == 2:
                return shard_teacher(teacher_model, self.accelerator)
            return prepare_fsdp(teacher_model, self.accelerator)
        return self.accelerator.prepare_model(teacher_model, evaluation_mode=True)

    def _teacher_role(self, index, name, weight, teacher_model, tokenizer, cache_dir, side_options) -> TeacherRole:
        """Teacher `index` of the run: frozen, placed (a cached teacher's two layers replicated on every process
        under any strategy, a live one like the student), with the side that reads its columns of a batch."""
        teacher_model.requires_grad_(False)
        teacher_model.eval()
        prefix = teacher_prefix(index)
        role = TeacherRole(name=name, weight=weight, prefix=prefix, tokenizer=tokenizer, cache_dir=cache_dir)
        if cache_dir is not None:
            role.cached = teacher_model.to(self.accelerator.device)
            role.side = CachedTeacherSide(
                role.cached, len(tokenizer), autocast=self.accelerator.autocast, prefix=prefix
            )
        else:
            role.model = self._prepare_teacher(teacher_model)
            role.side = ModelSide("teacher", len(tokenizer), prefix=prefix, model=role.model, **side_options)
        role.hidden_size = teacher_model.config.get_text_config().hidden_size
        if self.distillation_method.build_aligner is not None:
            role.aligner = self.distillation_method.build_aligner(self.args, self.processing_class, tokenizer)
        return role

    def _attach_projectors(self, teachers):
        """Register the projectors in the student, in the dtype of the student's own trainable weights: one
        `DWAKDProjectors`, or with several teachers a `ModuleDict` of them by teacher name.

        Under LoRA those are PEFT's float32 adapters over a (possibly bf16) frozen base: projectors in the base's
        dtype would get pure-bf16 AdamW updates, lost once they fall below half a bf16 ulp. Where TRL keeps the
        adapters in bf16 (ZeRO-3, whose gathers need one dtype; QLoRA) the projectors follow them, and DeepSpeed
        and FSDP then handle them as they handle the student's weights (DeepSpeed's float32 master copies,
        accelerate's float32 upcast of trainable FSDP parameters). The objective casts inputs to their dtype.
        """
        student_hidden_size = self.model.config.get_text_config().hidden_size
        trainable = [p for p in self.model.parameters() if p.requires_grad and p.is_floating_point()]
        reference = trainable[0] if trainable else next(self.model.parameters())
        embedding_projector = self.args.needs_embedding_projector
        projectors = [
            DWAKDProjectors(student_hidden_size, teacher.hidden_size, embedding_projector=embedding_projector)
            for teacher in teachers
        ]
        if len(projectors) > 1:
            projectors = nn.ModuleDict(zip([teacher.name for teacher in teachers], projectors))
        else:
            projectors = projectors[0]
        projectors.to(device=reference.device, dtype=reference.dtype if reference.is_floating_point() else None)
        self.model.add_module(PROJECTORS_ATTRIBUTE, projectors)

    @property
    def projectors(self) -> DWAKDProjectors | nn.ModuleDict | None:
        """The projectors: one `DWAKDProjectors`, or with several teachers a `ModuleDict` of them by teacher name."""
        return getattr(self.accelerator.unwrap_model(self.model), PROJECTORS_ATTRIBUTE, None)

    def projectors_of(self, teacher: TeacherRole) -> DWAKDProjectors | None:
        projectors = self.projectors
        return projectors[teacher.name] if isinstance(projectors, nn.ModuleDict) else projectors

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            prefixes = [teacher.prefix for teacher in self.teachers] or [teacher_prefix(0)]
            teacher_columns = [prefix + column for prefix in prefixes for column in TEACHER_COLUMNS]
            self._signature_columns = [*STUDENT_COLUMNS, *teacher_columns]
            if self.args.samples_responses:
                self._signature_columns.append(PROMPT_COLUMN)

    def create_optimizer(self, model=None):
        """TRL/Trainer's optimizer, with the projectors moved into their own group at `projector_learning_rate`."""
        optimizer = super().create_optimizer(model)
        projectors = self.projectors
        if projectors is None or any(group.get("dwakd_projectors") for group in optimizer.param_groups):
            return optimizer
        projector_params = {id(p) for p in projectors.parameters()}
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in projector_params]
        optimizer.add_param_group(
            {
                "params": list(projectors.parameters()),
                "lr": self.args.projector_learning_rate,
                "weight_decay": 0.0,
                "dwakd_projectors": True,
            }
        )
        return optimizer

    # ---- projector start ---------------------------------------------------------------------------------------

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None):
        """`Trainer.train`, after starting the projectors as `projector_init` says. A run that resumes from a
        checkpoint takes the checkpoint's projectors instead, and a second `train()` keeps the trained ones."""
        if not resume_from_checkpoint:
            self.start_projectors()
        return super().train(
            resume_from_checkpoint=resume_from_checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval
        )

    def start_projectors(self):
        """Apply `projector_init` to each teacher's projectors, once per trainer (docs/method.md, Projector start);
        returns per teacher name the aligned fit's `AlignedFit` or the number of shared strings of
        `pseudo_inverse` (empty for `random`)."""
        kind = self.args.projector_init
        if self.projectors is None or kind == "random" or self._projectors_started:
            return {}
        self._projectors_started = True
        student_bytes = TokenBytes.from_tokenizer(self.processing_class)
        results = {}
        for teacher in self.teachers:
            started = time.perf_counter()
            projectors, teacher_bytes = self.projectors_of(teacher), TokenBytes.from_tokenizer(teacher.tokenizer)
            if kind == "pseudo_inverse":
                teacher_head = (
                    teacher.cached.output_layer
                    if teacher.cached is not None
                    else self.accelerator.unwrap_model(teacher.model).get_output_embeddings()
                )
                student_head = self.accelerator.unwrap_model(self.model).get_output_embeddings()
                results[teacher.name] = pseudo_inverse_s2t(
                    projectors.s2t,
                    self._full_lm_head_weight(student_head.weight),
                    self._full_lm_head_weight(teacher_head.weight),
                    student_bytes,
                    teacher_bytes,
                )
            else:
                results[teacher.name] = fit_aligned_projectors(
                    projectors,
                    self._projector_fit_batches(teacher),
                    student_bytes,
                    teacher_bytes,
                    self.args.projector_init_ridge,
                    calibration_share(self.accelerator.process_index, self.accelerator.num_processes),
                )
            logger.info(
                f"projector_init={kind!r} for teacher {teacher.name!r}: {results[teacher.name]}, "
                f"{time.perf_counter() - started:.1f} s"
            )
        return results

    def _projector_fit_batches(self, teacher: TeacherRole):
        """`(student, teacher)` SideOutputs of this process's share of `projector_init_rows` training rows (drawn
        with the run's seed and dealt out one at a time), the models in eval mode, micro-batches of
        `per_device_train_batch_size`."""
        dataset = self.train_dataset
        generator = torch.Generator().manual_seed(self.args.seed)
        rows = torch.randperm(len(dataset), generator=generator)[: self.args.projector_init_rows].tolist()
        if len(rows) < self.accelerator.num_processes:  # a process without rows would skip the others' collectives
            raise ValueError(
                f"projector_init='aligned' fits on {len(rows)} training rows, fewer than the "
                f"{self.accelerator.num_processes} processes: raise `projector_init_rows` (and the training rows) "
                "to at least the number of processes."
            )
        rows = rows[self.accelerator.process_index :: self.accelerator.num_processes]
        size = self.args.per_device_train_batch_size
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(rows), size):
                batch = self._prepare_inputs(
                    self.data_collator([dataset[index] for index in rows[start : start + size]])
                )
                with torch.no_grad():
                    student, _ = self.student_side(batch, self.model)
                    teacher_outputs, _ = teacher.side(batch)
                yield student, teacher_outputs
        finally:
            self.model.train(was_training)

    # ---- on-policy steps ---------------------------------------------------------------------------------------

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Trainer's micro-batches of one optimizer step; on a sampling step (`hf_dwakd.on_policy`) rebuilt from
        sampled responses before the step's response tokens are counted for `num_items_in_batch`."""
        batches, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.response_sampler is None or not batches:
            return batches, num_items_in_batch
        models = {STUDENT: self.model_wrapped, TEACHER: self.teacher_model}
        batches, record = self.response_sampler.step_batches(batches, self.state.global_step, models, self.accelerator)
        if record.sampled_by is not None:
            num_items_in_batch = self._get_num_items_in_batch(batches, device)
        step_metrics = {key: torch.tensor(value, device=device) for key, value in record.metrics().items()}
        self._record_metrics("train", step_metrics, None)
        return batches, num_items_in_batch

    # ---- loss --------------------------------------------------------------------------------------------------

    def training_step(self, model, *args, **kwargs):
        with gathered_roots(model, *self._live_teachers()):  # the losses read root parameters after the forwards
            return super().training_step(model, *args, **kwargs)

    def prediction_step(self, model, *args, **kwargs):
        with gathered_roots(model, *self._live_teachers()):
            return super().prediction_step(model, *args, **kwargs)

    def _live_teachers(self):
        return [teacher.model for teacher in self.teachers if teacher.model is not None]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # Evaluation with `compute_metrics` asks for the outputs: then the student's logits are computed everywhere.
        student, student_logits = self.student_side(inputs, model, full_logits=return_outputs)
        outputs = []
        for teacher in self.teachers:
            with torch.no_grad():
                side, _ = teacher.side(inputs)
            projectors = self.projectors_of(teacher)
            outputs.append(TeacherOutputs(teacher.name, teacher.weight, side, projectors, teacher.aligner))
        step = self.state.global_step
        args = self.args if self.response_sampler is None else self.response_sampler.loss_args(inputs)
        if len(outputs) > 1:
            loss, metrics = several_teachers_loss(args, student, outputs, num_items_in_batch, step=step)
        else:  # one teacher, or none (sft): its loss unweighted, its metrics unprefixed
            teacher = outputs[0] if outputs else TeacherOutputs("", 1.0, None)
            loss, metrics = teacher_loss(args, student, teacher, num_items_in_batch, step=step)

        # Batches of sampled responses log their components apart, under the sampling model's prefix.
        prefix = METRIC_PREFIXES.get(inputs.get(SAMPLED_BY), "")
        loss = self._scaled_and_recorded(loss, metrics, num_items_in_batch, prefix)
        if not return_outputs:
            return loss
        # What the student's own forward returns: logits at every position, aligned with the unshifted labels.
        return loss, CausalLMOutputWithPast(loss=loss, logits=student_logits)

    def _scaled_and_recorded(self, loss, metrics, num_items_in_batch, prefix=""):
        """The loss scaled as `Trainer.compute_loss` scales it (`num_items_in_batch` counts every rank's tokens and
        DDP averages gradients); its components and annealed knobs queued for logging."""
        mode = "train" if self.model.training else "eval"
        scale = 1
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            scale = self.accelerator.num_processes
        self._record_metrics(mode, metrics, scale if num_items_in_batch is not None else None, prefix)
        if any(metric_name(key) in ("dtw_hidden", "dtw_embed") for key in metrics):
            self._metrics[mode]["dtw_gamma"].append(self.args.dtw_gamma_at(self.state.global_step))
        if self.args.kd_warmup_steps > 0:
            self._metrics[mode]["kd_student_scale"].append(self.args.kd_warmup_scale_at(self.state.global_step))
        return loss * scale

    def _full_lm_head_weight(self, weight):
        """The LM head weight whole, outside the forward pass (DWA-KD multiplies by it, detached).

        ZeRO-3 and FSDP2 keep parameters sharded between forwards: gather a detached copy there.
        """
        if self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters([weight]):
                return weight.detach().clone()
        return whole_weight(weight)

    def _record_metrics(self, mode, metrics, token_sum_scale, prefix=""):
        """Queue each component for `log()`: averaged over the logging window and across processes.

        A token-sum component of one micro-batch is a share of its optimizer step's value; scaling it by the number
        of accumulation steps (and processes) makes the window average equal the per-step value, like the loss.
        """
        scales = []
        for key in metrics:
            scale = 1
            if metric_name(key) in self.distillation_method.token_sum_metrics and token_sum_scale is not None:
                scale = token_sum_scale * (self.current_gradient_accumulation_steps if mode == "train" else 1)
            scales.append(scale)
        values = torch.stack([value.detach().float().reshape(()) for value in metrics.values()])
        values = values * torch.tensor(scales, dtype=values.dtype, device=values.device)
        # One gather and one host sync for all components, instead of one per component.
        gathered = self.accelerator.gather_for_metrics(values.unsqueeze(0)).mean(dim=0)
        for key, value in zip(metrics, gathered.tolist()):
            self._metrics[mode][f"{prefix}{key}"].append(value)

    # ---- saving and loading ------------------------------------------------------------------------------------

    def _save(self, output_dir=None, state_dict=None):
        """Save the student (or adapter) and tokenizer as `SFTTrainer` does, and the projectors beside them: in
        `projectors.safetensors`, or with several teachers one `projectors-<teacher name>.safetensors` each."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if state_dict is None:
            state_dict = self.accelerator.unwrap_model(self.model).state_dict()
        prefix = f"{PROJECTORS_ATTRIBUTE}."
        projector_state = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        student_state = {k: v for k, v in state_dict.items() if not k.startswith(prefix)}
        super()._save(output_dir, state_dict=student_state)
        if not (self.args.should_save and projector_state):
            return
        projector_state = {k: v.detach().cpu().contiguous() for k, v in projector_state.items()}
        for file_name, key_prefix in self._projector_files():
            state = {k[len(key_prefix) :]: v for k, v in projector_state.items() if k.startswith(key_prefix)}
            save_file(state, os.path.join(output_dir, file_name), metadata={"format": "pt"})

    def _projector_files(self) -> list[tuple[str, str]]:
        """`(file name, key prefix in the projectors' state dict)` of each projector file."""
        if not isinstance(self.projectors, nn.ModuleDict):
            return [(PROJECTORS_NAME, "")]
        return [(projectors_file_name(teacher.name), f"{teacher.name}.") for teacher in self.teachers]

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._load_projectors(resume_from_checkpoint)

    def _issue_warnings_after_load(self, load_result):
        # The student's weights file holds no projectors: `_load_projectors` restores them from their own file.
        prefix = f"{PROJECTORS_ATTRIBUTE}."
        load_result.missing_keys[:] = [key for key in load_result.missing_keys if not key.startswith(prefix)]
        super()._issue_warnings_after_load(load_result)

    def _load_best_model(self):
        super()._load_best_model()
        self._load_projectors(self.state.best_model_checkpoint)

    def _load_projectors(self, checkpoint_dir):
        if self.projectors is None:
            return
        device = str(next(self.projectors.parameters()).device)
        state = {}
        for file_name, key_prefix in self._projector_files():
            path = os.path.join(checkpoint_dir, file_name)
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"{path} is missing: this checkpoint holds no such projectors, so resuming would restart them "
                    "from random. Resume from a checkpoint written by DWAKDTrainer with the same teachers."
                )
            state |= {key_prefix + key: value for key, value in load_file(path, device=device).items()}
        load_full_state(self.projectors, state)

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """TRL's card, naming the teacher, with the scores an earlier `hf-dwakd evaluate --update_model_card` wrote
        into this folder's card (TRL writes a new card over it)."""
        earlier = read_card(self.args.output_dir) if self.is_world_process_zero() else None
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if not self.is_world_process_zero():
            return
        teachers = [(self._teacher_name(teacher), teacher.weight) for teacher in self.teachers]
        if len(teachers) < 2:  # one teacher: its name; none: None
            teachers = teachers[0][0] if teachers else None
        complete_trainer_card(self.args.output_dir, earlier, teachers, self.args.kd_method)

    def _teacher_name(self, teacher: TeacherRole) -> str:
        if teacher.cached is not None:  # the name the cache was built from
            return read_metadata(teacher.cache_dir)["teacher_name_or_path"]
        return self.accelerator.unwrap_model(teacher.model).config._name_or_path


# ---- helpers -----------------------------------------------------------------------------------------------------


def _with_cached_states(args, teacher_model, teacher_tokenizer, train_dataset, eval_dataset, cache_dir, prefix):
    """The prepared datasets joined with a teacher cache's states (the teacher's columns start with `prefix`),
    after checking the cache fits this run."""
    revision = (args.teacher_model_init_kwargs or {}).get("revision")
    if isinstance(teacher_model, str):
        name = teacher_model
        config = AutoConfig.from_pretrained(teacher_model, revision=revision, trust_remote_code=args.trust_remote_code)
    else:
        name, config = teacher_model.config._name_or_path, teacher_model.config
    splits = {"train": train_dataset, **split_names(eval_dataset)}
    weights = weights_identity(teacher_model, revision)
    run = describe_run(
        name, config, weights, teacher_tokenizer, args.max_length, args.max_prompt_length, splits, prefix
    )
    check_cache_matches(cache_dir, run)
    joined = {split: join_cached_states(data, cache_dir, split, prefix) for split, data in splits.items()}
    if isinstance(eval_dataset, dict):
        eval_dataset = {key: joined[f"eval_{key}"] for key in eval_dataset}
    elif eval_dataset is not None:
        eval_dataset = joined["eval"]
    return joined["train"], eval_dataset


def _resolve_teacher_argument(teacher_model, args) -> list:
    """The teachers to load: models or names, one per teacher (none for a method without a teacher); the
    per-teacher fields are checked against their number."""
    if not args.needs_teacher:
        if teacher_model is not None or args.teacher_model_name_or_path is not None:
            warnings.warn(f"kd_method={args.kd_method!r} uses no teacher; the teacher given is not loaded.")
        return []
    source = "`teacher_model`" if teacher_model is not None else "`teacher_model_name_or_path`"
    teacher_model = single_or_list(teacher_model)
    built = [teacher for teacher in per_teacher(teacher_model, 1) if not isinstance(teacher, (str, type(None)))]
    if built and args.teacher_model_init_kwargs:
        raise ValueError(
            "`teacher_model_init_kwargs` only applies when the teacher is loaded from a name, but `teacher_model` is "
            "already built: drop `teacher_model_init_kwargs` or pass the teacher's name."
        )
    teacher_model = teacher_model if teacher_model is not None else args.teacher_model_name_or_path
    if teacher_model is None:
        raise ValueError(
            f"kd_method={args.kd_method!r} needs a teacher: pass `teacher_model=` to DWAKDTrainer or set "
            "`teacher_model_name_or_path` in DWAKDConfig."
        )
    teachers = per_teacher(teacher_model, 1)
    args.check_teachers(len(teachers), source)
    return teachers


def _name_of(model):
    if model is None or isinstance(model, str):
        return model
    return getattr(model.config, "_name_or_path", None) or None


def _is_peft_model(model):
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)
