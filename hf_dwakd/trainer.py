"""`DWAKDTrainer`: TRL's `SFTTrainer` with a frozen teacher of another tokenizer and the DWA-KD objective.

The trainer only wires things together: the two-tokenizer data pipeline (`data.py`), the projectors
(`projectors.py`), the objective (`objective/`). The projectors are registered inside the student module so that
DDP all-reduces them and DeepSpeed steps them; they are saved beside the student as `projectors.safetensors`.
"""

import contextlib
import inspect
import os
import textwrap
import warnings

import torch
from datasets import Dataset
from safetensors.torch import load_file, save_file
from torch.distributed.tensor import DTensor
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import CausalLMOutputWithPast
from trl import SFTTrainer
from trl.models import prepare_deepspeed, prepare_fsdp

from .config import DWAKDConfig
from .data import PROMPT_COLUMN, DistillationCollator, check_dataset_columns, prepare_distillation_dataset
from .fsdp2 import gathered_roots, load_full_state, shard_teacher
from .inspection import AlignmentPlotCallback
from .methods import distillation_loss
from .model_card import complete_trainer_card, read_card
from .objective import shift_for_next_token
from .objective.outputs import no_logit_positions
from .on_policy import METRIC_PREFIXES, SAMPLED_BY, STUDENT, TEACHER, ResponseSampler
from .projectors import DWAKDProjectors
from .registry import get_method
from .teacher_cache import LightTeacher, cached_teacher_outputs, load_light_teacher
from .teacher_cache.store import check_cache_matches, describe_run, join_cached_states, read_metadata, split_names
from .unpadded import repadded, unpadded_forward_matches, unpadded_inputs

PROJECTORS_NAME = "projectors.safetensors"
PROJECTORS_ATTRIBUTE = "dwakd_projectors"
DISTILLATION_COLUMNS = [
    "input_ids",
    "attention_mask",
    "labels",
    "teacher_input_ids",
    "teacher_attention_mask",
    "teacher_labels",
    "teacher_hidden",  # only in datasets joined with a teacher cache
]


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
        teacher_model = _resolve_teacher_argument(teacher_model, args)
        eval_datasets = list(eval_dataset.values()) if isinstance(eval_dataset, dict) else [eval_dataset]
        for dataset in [train_dataset, *eval_datasets]:
            if dataset is not None:
                check_dataset_columns(dataset.column_names)
        if peft_config is not None and _is_peft_model(model):
            raise ValueError(
                "You passed a `PeftModel` together with a `peft_config`: pass the base model with the `peft_config`, "
                "or the `PeftModel` without one."
            )

        student_tokenizer = processing_class or _load_tokenizer(_name_of(model), "student", "processing_class")
        if not args.needs_teacher:
            teacher_tokenizer = student_tokenizer
        else:
            teacher_tokenizer = teacher_processing_class or _load_tokenizer(
                args.teacher_tokenizer_name_or_path or _name_of(teacher_model),
                "teacher",
                "teacher_processing_class` or `teacher_tokenizer_name_or_path",
            )
        for role, tokenizer in (("student", student_tokenizer), ("teacher", teacher_tokenizer)):
            _ensure_pad_token(tokenizer, role)

        prepare = dict(
            student_tokenizer=student_tokenizer,
            teacher_tokenizer=teacher_tokenizer,
            max_length=args.max_length,
            max_prompt_length=args.max_prompt_length,
            num_proc=args.dataset_num_proc,
        )
        train_dataset = prepare_distillation_dataset(train_dataset, **prepare, keep_prompts=args.samples_responses)
        if isinstance(eval_dataset, dict):
            eval_dataset = {key: prepare_distillation_dataset(ds, **prepare) for key, ds in eval_dataset.items()}
        elif eval_dataset is not None:
            eval_dataset = prepare_distillation_dataset(eval_dataset, **prepare)
        cached = args.teacher_cache_dir is not None and teacher_model is not None
        if cached:  # refused here, before any model is loaded, when the cache belongs to another run
            train_dataset, eval_dataset = _with_cached_states(
                args, teacher_model, teacher_tokenizer, train_dataset, eval_dataset
            )
        args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
        if data_collator is None:
            data_collator = DistillationCollator(
                student_tokenizer.pad_token_id, teacher_tokenizer.pad_token_id, args.pad_to_multiple_of
            )

        if cached:
            teacher_model = (
                load_light_teacher(teacher_model, **_teacher_init_kwargs(args))
                if isinstance(teacher_model, str)
                else LightTeacher.from_model(teacher_model)
            )
        elif isinstance(teacher_model, str):
            teacher_model = AutoModelForCausalLM.from_pretrained(teacher_model, **_teacher_init_kwargs(args))

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
        self.teacher_processing_class = teacher_tokenizer
        self.student_vocab_size = len(student_tokenizer)
        self.teacher_vocab_size = len(teacher_tokenizer)
        # Our loss is already normalised by the accumulated token count; make Trainer count them and not rescale.
        self.model_accepts_loss_kwargs = True
        self.loss_is_scaled_for_ga = True

        # Per role ("student", "teacher"): whether the output layer on the last hidden state gives the model's
        # logits, checked on the first batch (`_side_outputs`).
        self._logits_from_hidden = {}
        # Per role: whether its forward runs unpadded (`unpadded_forward`), decided on the first batch.
        self._unpadded_forward = {}
        self.teacher_model = None
        self.cached_teacher = None  # a `LightTeacher` when the teacher's states come from a cache
        if teacher_model is not None:
            teacher_model.requires_grad_(False)
            teacher_model.eval()
            if cached:  # two layers, replicated on every process under any strategy
                self.cached_teacher = teacher_model.to(self.accelerator.device)
            else:
                self.teacher_model = self._prepare_teacher(teacher_model)
        if args.needs_projectors:
            self._attach_projectors(teacher_model.config.get_text_config().hidden_size)
        self.distillation_method = get_method(args.kd_method)
        self.aligner = None
        if self.distillation_method.build_aligner is not None:
            self.aligner = self.distillation_method.build_aligner(args, student_tokenizer, teacher_tokenizer)
        if args.alignment_plot_steps:
            self.add_callback(AlignmentPlotCallback(self))
        self.response_sampler = None  # set when some steps train on sampled responses (`lmbda`, `seq_kd`)
        if args.samples_responses:
            self.response_sampler = ResponseSampler(args, student_tokenizer, teacher_tokenizer, self.data_collator)

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

    def _attach_projectors(self, teacher_hidden_size):
        """Register the projectors in the student, in the dtype of the student's own trainable weights.

        Under LoRA those are PEFT's float32 adapters over a (possibly bf16) frozen base: projectors in the base's
        dtype would get pure-bf16 AdamW updates, lost once they fall below half a bf16 ulp. Where TRL keeps the
        adapters in bf16 (ZeRO-3, whose gathers need one dtype; QLoRA) the projectors follow them, and DeepSpeed
        and FSDP then handle them as they handle the student's weights (DeepSpeed's float32 master copies,
        accelerate's float32 upcast of trainable FSDP parameters). The objective casts inputs to their dtype.
        """
        student_hidden_size = self.model.config.get_text_config().hidden_size
        trainable = [p for p in self.model.parameters() if p.requires_grad and p.is_floating_point()]
        reference = trainable[0] if trainable else next(self.model.parameters())
        projectors = DWAKDProjectors(
            student_hidden_size, teacher_hidden_size, embedding_projector=self.args.needs_embedding_projector
        )
        projectors.to(device=reference.device, dtype=reference.dtype if reference.is_floating_point() else None)
        self.model.add_module(PROJECTORS_ATTRIBUTE, projectors)

    @property
    def projectors(self) -> DWAKDProjectors | None:
        return getattr(self.accelerator.unwrap_model(self.model), PROJECTORS_ATTRIBUTE, None)

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = list(DISTILLATION_COLUMNS)
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
        with gathered_roots(model, self.teacher_model):  # the losses read root parameters after the forwards
            return super().training_step(model, *args, **kwargs)

    def prediction_step(self, model, *args, **kwargs):
        with gathered_roots(model, self.teacher_model):
            return super().prediction_step(model, *args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        # Evaluation with `compute_metrics` asks for the outputs: then the student's logits are computed everywhere.
        student, student_logits = self._side_outputs(
            model,
            inputs["input_ids"],
            inputs["attention_mask"],
            inputs["labels"],
            self.student_vocab_size,
            "student",
            full_logits=return_outputs,
        )
        teacher = None
        if self.cached_teacher is not None:
            teacher = cached_teacher_outputs(inputs, self.cached_teacher, self.teacher_vocab_size)
        elif self.teacher_model is not None:
            with torch.no_grad():
                teacher, _ = self._side_outputs(
                    self.teacher_model,
                    inputs["teacher_input_ids"],
                    inputs["teacher_attention_mask"],
                    inputs["teacher_labels"],
                    self.teacher_vocab_size,
                    "teacher",
                )
        sampled_by = inputs.get(SAMPLED_BY)
        loss, metrics = distillation_loss(
            self.args if self.response_sampler is None else self.response_sampler.loss_args(inputs),
            student,
            teacher,
            num_items_in_batch,
            projectors=self.projectors,
            aligner=self.aligner,
            step=self.state.global_step,
        )

        # Like `Trainer.compute_loss`: `num_items_in_batch` counts every rank's tokens and DDP averages gradients.
        scale = 1
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            scale = self.accelerator.num_processes
        loss = loss * scale
        # Batches of sampled responses log their components apart, under the sampling model's prefix.
        prefix = METRIC_PREFIXES.get(sampled_by, "")
        self._record_metrics(mode, metrics, scale if num_items_in_batch is not None else None, prefix)
        if "dtw_hidden" in metrics or "dtw_embed" in metrics:
            self._metrics[mode]["dtw_gamma"].append(self.args.dtw_gamma_at(self.state.global_step))
        if self.args.kd_warmup_steps > 0:
            self._metrics[mode]["kd_student_scale"].append(self.args.kd_warmup_scale_at(self.state.global_step))
        if not return_outputs:
            return loss
        # What the student's own forward returns: logits at every position, aligned with the unshifted labels.
        return loss, CausalLMOutputWithPast(loss=loss, logits=student_logits)

    def _side_outputs(self, model, input_ids, attention_mask, labels, vocab_size, role, full_logits=False):
        """One model's `SideOutputs`, its output layer applied only where a loss reads logits, and the logits its
        forward returned.

        The model runs with `logits_to_keep=1` (its output layer on one position per row), and the losses apply the
        output module to the response rows of the last hidden state. On the first batch, that one position checks
        that the module on the last hidden state reproduces the model's logits; a model that post-processes them
        (final soft-capping, a logit scale) falls back to the full forward, with a warning. `full_logits`: run the
        full forward (logits at every position).
        """
        unwrapped = self.accelerator.unwrap_model(model)
        output_module = unwrapped.get_output_embeddings()
        rows_only = not full_logits and self._logits_from_hidden.get(role, _accepts_logits_to_keep(unwrapped))
        unpadded = rows_only and self._unpadded_forward.get(role, False)
        # The first batch keeps one position for the check; later ones none (an empty index: no output layer).
        keep = 1 if role not in self._logits_from_hidden else no_logit_positions(input_ids.device)
        forward_inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if unpadded:
            forward_inputs = dict(zip(("input_ids", "position_ids"), unpadded_inputs(input_ids, attention_mask)))
        with _captured_output(unwrapped.get_input_embeddings()) as embeddings:
            outputs = model(
                **forward_inputs,
                output_hidden_states=True,
                use_cache=False,
                **({"logits_to_keep": keep} if rows_only else {}),
            )
        hidden, input_embeds = outputs.hidden_states[-1], embeddings[0]
        if unpadded:
            hidden, input_embeds = repadded(hidden, attention_mask), repadded(input_embeds, attention_mask)
        output_layer = self._output_layer(output_module)
        if rows_only and role not in self._logits_from_hidden:
            self._logits_from_hidden[role] = _reproduces_logits(output_layer, hidden[:, -1], outputs.logits[:, -1])
            if not self._logits_from_hidden[role]:
                warnings.warn(
                    f"The {role}'s logits are not its output layer applied to its last hidden state (final "
                    "soft-capping or a logit scale?): it runs its full forward, output layer at every position."
                )
                return self._side_outputs(model, input_ids, attention_mask, labels, vocab_size, role)
            self._unpadded_forward[role] = self.args.unpadded_forward and self._unpadded_forward_works(
                unwrapped, input_ids, attention_mask, role
            )
        side = shift_for_next_token(
            None if rows_only else outputs.logits,
            hidden,
            input_embeds,
            labels,
            self._full_lm_head_weight(output_module.weight),
            vocab_size,
            output_layer=output_layer if rows_only else None,
        )
        return side, outputs.logits

    def _unpadded_forward_works(self, model, input_ids, attention_mask, role):
        """Checked once, on the first batch: a model whose unpadded forward differs from its padded one (its
        attention ignores position ids) keeps running padded, with a warning."""
        if unpadded_forward_matches(model, input_ids, attention_mask):
            return True
        warnings.warn(
            f"The {role}'s forward on unpadded rows (position ids restarting per row, no attention mask) differs "
            "from its padded forward: its attention does not keep packed rows apart. It runs padded."
        )
        return False

    def _output_layer(self, module):
        """`module` on hidden rows under the mixed-precision autocast that the prepared model's forward uses.

        Under FSDP2 its forward runs without the module's hooks, which are FSDP's: called again after the model's
        forward, they would start a new pass of its unit, which then reshards in the middle of the backward. Its
        weights are gathered there already (`gathered_roots`; accelerate's output-layer unit waits for the backward).
        """
        forward = module.forward if self.accelerator.is_fsdp2 else module

        def output_layer(rows):
            with self.accelerator.autocast():
                return forward(rows)

        return output_layer

    def _full_lm_head_weight(self, weight):
        """The LM head weight whole, outside the forward pass (DWA-KD multiplies by it, detached).

        ZeRO-3 and FSDP2 keep parameters sharded between forwards: gather a detached copy there.
        """
        if isinstance(weight, DTensor):
            return weight.full_tensor().detach()
        if self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters([weight]):
                return weight.detach().clone()
        return weight

    def _record_metrics(self, mode, metrics, token_sum_scale, prefix=""):
        """Queue each component for `log()`: averaged over the logging window and across processes.

        A token-sum component of one micro-batch is a share of its optimizer step's value; scaling it by the number
        of accumulation steps (and processes) makes the window average equal the per-step value, like the loss.
        """
        scales = []
        for key in metrics:
            scale = 1
            if key in self.distillation_method.token_sum_metrics and token_sum_scale is not None:
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
        """Save the student (or adapter) and tokenizer as `SFTTrainer` does, and the projectors beside them."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if state_dict is None:
            state_dict = self.accelerator.unwrap_model(self.model).state_dict()
        prefix = f"{PROJECTORS_ATTRIBUTE}."
        projector_state = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        student_state = {k: v for k, v in state_dict.items() if not k.startswith(prefix)}
        super()._save(output_dir, state_dict=student_state)
        if self.args.should_save and projector_state:
            projector_state = {k: v.detach().cpu().contiguous() for k, v in projector_state.items()}
            save_file(projector_state, os.path.join(output_dir, PROJECTORS_NAME), metadata={"format": "pt"})

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
        path = os.path.join(checkpoint_dir, PROJECTORS_NAME)
        if self.projectors is None:
            return
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} is missing: this checkpoint holds no projectors, so resuming would restart them from random. "
                "Resume from a checkpoint written by DWAKDTrainer."
            )
        load_full_state(self.projectors, load_file(path, device=str(next(self.projectors.parameters()).device)))

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """TRL's card, naming the teacher, with the scores an earlier `hf-dwakd evaluate --update_model_card` wrote
        into this folder's card (TRL writes a new card over it)."""
        earlier = read_card(self.args.output_dir) if self.is_world_process_zero() else None
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if self.is_world_process_zero():
            complete_trainer_card(self.args.output_dir, earlier, self._teacher_name(), self.args.kd_method)

    def _teacher_name(self):
        if self.cached_teacher is not None:  # the name the cache was built from
            return read_metadata(self.args.teacher_cache_dir)["teacher_name_or_path"]
        if self.teacher_model is not None:
            return self.accelerator.unwrap_model(self.teacher_model).config._name_or_path
        return None


# ---- helpers -----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _captured_output(module):
    """Collect `module`'s forward outputs: the embeddings as the forward computes them (also under ZeRO-3)."""
    captured = []
    handle = module.register_forward_hook(lambda _module, _inputs, output: captured.append(output))
    try:
        yield captured
    finally:
        handle.remove()


def _accepts_logits_to_keep(model):
    """Whether the causal LM (under a PEFT wrapper, its base model) takes `logits_to_keep`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


@torch.no_grad()
def _reproduces_logits(output_layer, hidden_rows, logits):
    """Whether `output_layer(hidden_rows)` equals the model's `logits` for those rows, up to rounding."""
    rows = output_layer(hidden_rows).float()
    logits = logits.float()
    if rows.shape != logits.shape:
        return False
    tolerance = 1e-4 if hidden_rows.dtype == torch.float32 and rows.dtype == torch.float32 else 2e-2
    return bool((rows - logits).abs().max() <= tolerance * logits.abs().max().clamp(min=1))


def _with_cached_states(args, teacher_model, teacher_tokenizer, train_dataset, eval_dataset):
    """The prepared datasets joined with the teacher cache's states, after checking the cache fits this run."""
    if isinstance(teacher_model, str):
        name = teacher_model
        config = AutoConfig.from_pretrained(teacher_model, trust_remote_code=args.trust_remote_code)
    else:
        name, config = teacher_model.config._name_or_path, teacher_model.config
    splits = {"train": train_dataset, **split_names(eval_dataset)}
    run = describe_run(name, config, teacher_tokenizer, args.max_length, args.max_prompt_length, splits)
    check_cache_matches(args.teacher_cache_dir, run)
    joined = {split: join_cached_states(data, args.teacher_cache_dir, split) for split, data in splits.items()}
    if isinstance(eval_dataset, dict):
        eval_dataset = {key: joined[f"eval_{key}"] for key in eval_dataset}
    elif eval_dataset is not None:
        eval_dataset = joined["eval"]
    return joined["train"], eval_dataset


def _resolve_teacher_argument(teacher_model, args):
    if not args.needs_teacher:
        if teacher_model is not None or args.teacher_model_name_or_path is not None:
            warnings.warn(f"kd_method={args.kd_method!r} uses no teacher; the teacher given is not loaded.")
        return None
    if teacher_model is not None and not isinstance(teacher_model, str) and args.teacher_model_init_kwargs:
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
    return teacher_model


def _teacher_init_kwargs(args):
    kwargs = dict(args.teacher_model_init_kwargs or {})
    dtype = kwargs.get("dtype")
    if isinstance(dtype, str) and dtype != "auto":
        kwargs["dtype"] = getattr(torch, dtype)
    kwargs.setdefault("trust_remote_code", args.trust_remote_code)
    return kwargs


def _load_tokenizer(name, role, argument):
    if name is None:
        raise ValueError(f"Cannot tell which tokenizer the {role} uses: pass `{argument}`.")
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"No tokenizer found for the {role} at {name!r} ({error}). Pass `{argument}` with the {role}'s tokenizer."
        ) from error


def _ensure_pad_token(tokenizer, role):
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
