"""`DWAKDConfig`: TRL's `SFTConfig` plus one field per knob of the DWA-KD method (docs/method.md)."""

import re
from dataclasses import dataclass, field, fields
from typing import Any

from trl import SFTConfig

from .inspection.figure import require_matplotlib
from .objective import DIVERGENCES, DWAKDLossOptions
from .ops.soft_dtw import BACKENDS as DTW_BACKENDS
from .teacher_cache.store import STORAGE_DTYPES as CACHE_DTYPES

KD_METHODS = ("dwakd", "sft", "dskd", "uld", "mined", "multilevel_ot")
WITH_TEACHER = KD_METHODS[:1] + KD_METHODS[2:]
WITH_PROJECTORS = ("dwakd", "dskd")
# Fields that only some methods read; setting one for another method is refused (it would silently do nothing).
# The teacher fields are not among them: a pair's recipe stays usable with `kd_method="sft"`, which ignores them.
FIELD_METHODS = {
    "ce_weight": WITH_TEACHER,
    "kd_weight": WITH_TEACHER,
    "kd_temperature": WITH_TEACHER,
    "kd_divergence": WITH_PROJECTORS,
    "kd_skew": WITH_PROJECTORS,
    "kd_chunk_size": ("dwakd", "dskd", "sft"),
    "projector_learning_rate": WITH_PROJECTORS,
    **{
        name: ("dwakd",)
        for name in (
            "dtw_weight",
            "use_entropy_weighting",
            "use_teacher_gate",
            "student_weight_normalization",
            "kd_warmup_steps",
            "use_dtw",
            "use_dtw_band",
            "use_dtw_hidden",
            "use_dtw_embed",
            "dtw_gamma",
            "dtw_gamma_end",
            "dtw_gamma_anneal_steps",
            "dtw_band_base",
            "dtw_band_beta",
            "dtw_band_alpha",
            "dtw_band_penalty",
            "dtw_backend",
        )
    },
    "alignment_plot_steps": ("dwakd",),
    "uld_top_k": ("uld",),
    "mined_top_k": ("mined",),
    "mined_cache_dir": ("mined",),
    "ot_top_k": ("multilevel_ot",),
    "ot_log_weight": ("multilevel_ot",),
    "ot_sinkhorn_weight": ("multilevel_ot",),
    "ot_sinkhorn_epsilon": ("multilevel_ot",),
    "ot_sinkhorn_iterations": ("multilevel_ot",),
}
# The objective's option names and the config fields that set them.
LOSS_OPTION_FIELDS = {
    "ce_weight": "ce_weight",
    "kd_weight": "kd_weight",
    "dtw_weight": "dtw_weight",
    "temperature": "kd_temperature",
    "divergence": "kd_divergence",
    "skew": "kd_skew",
    "entropy_weighting": "use_entropy_weighting",
    "teacher_gate": "use_teacher_gate",
    "student_weight_normalization": "student_weight_normalization",
    "dtw": "use_dtw",
    "dtw_band": "use_dtw_band",
    "dtw_hidden": "use_dtw_hidden",
    "dtw_embed": "use_dtw_embed",
    "gamma": "dtw_gamma",
    "band_base": "dtw_band_base",
    "band_beta": "dtw_band_beta",
    "band_alpha": "dtw_band_alpha",
    "band_penalty": "dtw_band_penalty",
    "chunk_size": "kd_chunk_size",
    "dtw_backend": "dtw_backend",
}


@dataclass
class DWAKDConfig(SFTConfig):
    r"""
    Configuration for [`DWAKDTrainer`]: every field of [`trl.SFTConfig`] plus the DWA-KD knobs below. Defaults are
    those of docs/method.md: the paper's (arXiv 2602.21669), or the released code's where the paper states none.

    Teacher:
        teacher_model_name_or_path (`str`, *optional*): Hub id or path of the teacher, when `teacher_model` is not
            passed to the trainer.
        teacher_model_init_kwargs (`dict` or JSON `str`, *optional*): keyword arguments for
            `AutoModelForCausalLM.from_pretrained` when the teacher is loaded from a name.
        teacher_tokenizer_name_or_path (`str`, *optional*): the teacher's tokenizer; defaults to the teacher's name.
        teacher_cache_dir (`str`, *optional*): a teacher cache (`hf-dwakd cache-teacher`): train from the stored
            teacher states with only the teacher's embedding and output layers loaded. Also where the build writes.
        teacher_cache_dtype (`str`, defaults to `"float32"`): dtype the build stores the states in, one of
            `float32`, `bfloat16`, `float16`.

    Objective:
        kd_method (`str`, defaults to `"dwakd"`): the distillation objective, one of `KD_METHODS`: `dwakd`, or a
            baseline of docs/method.md, Baselines (`sft` needs no teacher). Baselines train
            `ce_weight * CE + kd_weight * KD` (for `dskd` that is DSKD's `(1 - kd_rate) CE + kd_rate KD` with the
            default 0.5 / 0.5).
        max_prompt_length (`int`, defaults to `256`): prompt tokens kept on each side (`max_length` defaults to 512).
        ce_weight, kd_weight, dtw_weight (`float`, defaults to `0.5`, `0.5`, `0.2`): weights of the student
            cross-entropy, the weighted dual-space KD and the Soft-DTW alignment.
        kd_temperature (`float`, defaults to `2.0`): temperature inside every KL term.
        kd_divergence (`str`, defaults to `"forward_kl"`): one of `DIVERGENCES`, used in both spaces.
        kd_skew (`float`, defaults to `0.1`): mixture weight of the skewed divergences.
        use_entropy_weighting, use_teacher_gate (`bool`, default `True`): ablation switches of the token weights.
        student_weight_normalization (`str`, defaults to `"product"`): `"product"` normalises H_s * g per sequence;
            `"entropy"` (the released DWA-KD code) normalises H_s and multiplies by the raw gate g.
        kd_warmup_steps (`int`, defaults to `0`): ramp the student-space KD term linearly from 0 to full weight
            over this many optimizer steps (the released DWA-KD code's warm-up; the teacher-space KD and the
            projectors' warm-up CE keep their full weight, so the projection learns before it is imitated).
        use_dtw, use_dtw_band, use_dtw_hidden, use_dtw_embed (`bool`, default `True`): ablation switches of the
            Soft-DTW alignment, its attention-entropy band and each of its two pairs.
        dtw_gamma (`float`, defaults to `2.0`): Soft-DTW smoothing; with `dtw_gamma_end` and
            `dtw_gamma_anneal_steps` it is annealed linearly from `dtw_gamma` to `dtw_gamma_end`.
        dtw_band_base, dtw_band_beta, dtw_band_alpha, dtw_band_penalty (`float`, defaults `5`, `2.0`, `0.7`, `1.0`):
            the band's base width `b`, entropy slope `beta`, centre mix `alpha` and penalty `lambda_band`.
        dtw_backend (`str`, defaults to `"auto"`): Soft-DTW kernel, one of `DTW_BACKENDS`.
        kd_chunk_size (`int`, *optional*): compute the vocabulary-wide terms this many tokens at a time.
        projector_learning_rate (`float`, defaults to `1e-3`): learning rate of the projectors' parameter group.
        alignment_plot_steps (`int`, defaults to `0`): draw the alignment picture of the first training example
            every N steps (`hf_dwakd.inspection`); 0 = off.

    Baselines (each refused with another `kd_method`):
        uld_top_k (`int`, *optional*): ULD compares the k largest probabilities only (exact when None).
        mined_top_k, mined_cache_dir: MinED's kept teacher tokens and the vocabulary map's cache folder.
        ot_top_k, ot_log_weight, ot_sinkhorn_weight, ot_sinkhorn_epsilon, ot_sinkhorn_iterations: MultiLevelOT.
    """

    _VALID_DICT_FIELDS = SFTConfig._VALID_DICT_FIELDS + ["teacher_model_init_kwargs"]

    max_length: int | None = field(
        default=512, metadata={"help": "Maximum tokens of prompt + response on each side (paper: 512)."}
    )
    max_prompt_length: int = field(
        default=256, metadata={"help": "Maximum prompt tokens on each side; longer prompts are truncated (paper: 256)."}
    )
    teacher_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Hub id or local path of the teacher model."}
    )
    teacher_model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "Keyword arguments (a dict or JSON string) for loading the teacher from its name."},
    )
    teacher_tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Hub id or local path of the teacher's tokenizer (default: the teacher's)."}
    )
    teacher_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Teacher cache folder (hf-dwakd cache-teacher): train without running the teacher."},
    )
    teacher_cache_dtype: str = field(
        default="float32",
        metadata={"help": f"dtype the teacher cache stores its states in, one of {tuple(CACHE_DTYPES)}."},
    )
    kd_method: str = field(default="dwakd", metadata={"help": f"Distillation objective, one of {KD_METHODS}."})
    ce_weight: float = field(default=0.5, metadata={"help": "Weight of the student cross-entropy (lambda_ce)."})
    kd_weight: float = field(default=0.5, metadata={"help": "Weight of the weighted dual-space KD (lambda_kd)."})
    dtw_weight: float = field(default=0.2, metadata={"help": "Weight of the Soft-DTW alignment (lambda_dtw)."})
    kd_temperature: float = field(default=2.0, metadata={"help": "Temperature tau inside every KL term."})
    kd_divergence: str = field(
        default="forward_kl", metadata={"help": f"Divergence of both KD spaces, one of {tuple(DIVERGENCES)}."}
    )
    kd_skew: float = field(default=0.1, metadata={"help": "Mixture weight of the skewed divergences, in (0, 1)."})
    use_entropy_weighting: bool = field(
        default=True, metadata={"help": "Ablation: entropy-based token weights (off = all weights 1)."}
    )
    use_teacher_gate: bool = field(
        default=True, metadata={"help": "Ablation: multiply the student entropy by the teacher confidence gate."}
    )
    student_weight_normalization: str = field(
        default="product",
        metadata={
            "help": "What the per-sequence normalisation of the student KD weights covers: 'product' (H_s * gate) "
            "or 'entropy' (H_s alone, then times the raw gate, as the released DWA-KD code does)."
        },
    )
    kd_warmup_steps: int = field(
        default=0,
        metadata={
            "help": "Optimizer steps over which the student-space KD term ramps linearly from 0 to full weight "
            "(the teacher-space KD and the projectors' CE are not ramped)."
        },
    )
    use_dtw: bool = field(default=True, metadata={"help": "Ablation: the Soft-DTW sequence alignment term."})
    use_dtw_band: bool = field(default=True, metadata={"help": "Ablation: the attention-entropy soft band."})
    use_dtw_hidden: bool = field(default=True, metadata={"help": "Ablation: the hidden-state Soft-DTW pair."})
    use_dtw_embed: bool = field(default=True, metadata={"help": "Ablation: the embedding Soft-DTW pair."})
    dtw_gamma: float = field(default=2.0, metadata={"help": "Soft-DTW smoothing gamma (start value when annealed)."})
    dtw_gamma_end: float | None = field(
        default=None, metadata={"help": "Final gamma of the linear annealing (needs dtw_gamma_anneal_steps > 0)."}
    )
    dtw_gamma_anneal_steps: int = field(
        default=0, metadata={"help": "Optimizer steps over which gamma goes from dtw_gamma to dtw_gamma_end."}
    )
    dtw_band_base: float = field(default=5.0, metadata={"help": "Band base width b."})
    dtw_band_beta: float = field(default=2.0, metadata={"help": "Band width slope beta on the attention entropy."})
    dtw_band_alpha: float = field(
        default=0.7, metadata={"help": "Band centre mix alpha between attention centre and diagonal, in [0, 1]."}
    )
    dtw_band_penalty: float = field(default=1.0, metadata={"help": "Band penalty lambda_band added off the band."})
    dtw_backend: str = field(default="auto", metadata={"help": f"Soft-DTW kernel, one of {DTW_BACKENDS}."})
    kd_chunk_size: int | None = field(
        default=None, metadata={"help": "Tokens per chunk for the vocabulary-wide terms (None = all at once)."}
    )
    projector_learning_rate: float = field(
        default=1e-3, metadata={"help": "Learning rate of the projectors' optimizer parameter group."}
    )
    alignment_plot_steps: int = field(
        default=0,
        metadata={
            "help": "Draw the first training example's cross-model attention, band and Soft-DTW alignment before "
            "training and every N optimizer steps, into output_dir/alignment/ and the TensorBoard/W&B trackers of "
            "`report_to` (needs `pip install hf-dwakd[plot]`). 0 = off."
        },
    )
    uld_top_k: int | None = field(
        default=None, metadata={"help": "uld: compare only the k largest probabilities (None = exact full sort)."}
    )
    mined_top_k: int | None = field(
        default=None, metadata={"help": "mined: keep the teacher's k most likely tokens (None = all)."}
    )
    mined_cache_dir: str | None = field(
        default=None, metadata={"help": "mined: folder caching the vocabulary map (default ~/.cache/hf_dwakd/mined)."}
    )
    ot_top_k: int = field(default=50, metadata={"help": "multilevel_ot: probabilities kept per token."})
    ot_log_weight: float = field(default=0.1, metadata={"help": "multilevel_ot: weight of the logarithmic term."})
    ot_sinkhorn_weight: float = field(
        default=0.1, metadata={"help": "multilevel_ot: weight of the sequence-level Sinkhorn term."}
    )
    ot_sinkhorn_epsilon: float = field(default=0.1, metadata={"help": "multilevel_ot: Sinkhorn entropic epsilon."})
    ot_sinkhorn_iterations: int = field(default=20, metadata={"help": "multilevel_ot: Sinkhorn iterations."})

    def __post_init__(self):
        super().__post_init__()
        self._check_choice("kd_method", KD_METHODS)
        self._check_choice("teacher_cache_dtype", tuple(CACHE_DTYPES))
        self._check_fields_belong_to_method()
        if (self.dtw_gamma_end is None) != (self.dtw_gamma_anneal_steps == 0):
            raise ValueError(
                "Gamma annealing needs both `dtw_gamma_end` (> 0) and `dtw_gamma_anneal_steps` (> 0); set both, or "
                "neither for a constant `dtw_gamma`."
            )
        if self.dtw_gamma_end is not None and (self.dtw_gamma_end <= 0 or self.dtw_gamma_anneal_steps < 0):
            raise ValueError("`dtw_gamma_end` must be > 0 and `dtw_gamma_anneal_steps` >= 0.")
        if self.kd_warmup_steps < 0:
            raise ValueError(f"`kd_warmup_steps` must be >= 0, got {self.kd_warmup_steps}.")
        self.loss_options()  # validates every objective knob, with the errors naming this config's fields
        if self.kd_method not in ("dwakd", "sft") and self.ce_weight + self.kd_weight == 0:
            raise ValueError(
                f"`ce_weight` and `kd_weight` are both 0, so kd_method={self.kd_method!r} has nothing to train: set "
                "at least one of them > 0."
            )
        if self.alignment_plot_steps < 0:
            raise ValueError(f"`alignment_plot_steps` must be >= 0 (0 = off), got {self.alignment_plot_steps}.")
        if self.alignment_plot_steps:
            require_matplotlib()
        if self.projector_learning_rate <= 0:
            raise ValueError(f"`projector_learning_rate` must be > 0, got {self.projector_learning_rate}.")
        if self.max_length is None or self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"`max_prompt_length` ({self.max_prompt_length}) must be smaller than `max_length` "
                f"({self.max_length}) so that some response survives truncation."
            )
        if self.use_liger_kernel:
            raise ValueError(
                "`use_liger_kernel=True` is not supported by DWAKDTrainer: the objective needs the full logits and "
                "hidden states of both models. Set `use_liger_kernel=False`."
            )
        if self.packing or self.padding_free:
            raise ValueError(
                "`packing` and `padding_free` are not supported by DWAKDTrainer: each example is aligned across two "
                "tokenizers. Set `packing=False` and `padding_free=False`."
            )

    def loss_options(self, step: int = 0) -> DWAKDLossOptions:
        """The objective's options at optimizer step `step` (gamma annealed when configured)."""
        values = {option: getattr(self, name) for option, name in LOSS_OPTION_FIELDS.items()}
        values["gamma"] = self.dtw_gamma_at(step)
        values["kd_student_scale"] = self.kd_warmup_scale_at(step)
        values["dtw"] = self.use_dtw and self.dtw_weight > 0
        try:
            return DWAKDLossOptions(**values)
        except ValueError as error:
            message = re.sub(r"\b\w+\b", lambda word: LOSS_OPTION_FIELDS.get(word[0], word[0]), str(error))
            raise ValueError(f"DWAKDConfig: {message}") from None

    def _check_fields_belong_to_method(self):
        defaults = {f.name: f.default for f in fields(self)}
        for name, methods in FIELD_METHODS.items():
            if self.kd_method not in methods and getattr(self, name) != defaults[name]:
                raise ValueError(
                    f"`{name}` belongs to kd_method {' / '.join(methods)} and has no effect with "
                    f"kd_method={self.kd_method!r}: remove it, or choose one of those methods."
                )

    def _check_choice(self, name, choices):
        if getattr(self, name) not in choices:
            raise ValueError(f"`{name}` must be one of {choices}, got {getattr(self, name)!r}.")

    @property
    def needs_teacher(self) -> bool:
        return self.kd_method in WITH_TEACHER

    @property
    def needs_projectors(self) -> bool:
        return self.kd_method in WITH_PROJECTORS

    @property
    def needs_embedding_projector(self) -> bool:
        return self.kd_method == "dwakd" and self.loss_options().uses_dtw and self.use_dtw_embed

    def kd_warmup_scale_at(self, step: int) -> float:
        """The student-space KD term's scale at optimizer step `step`: 1, or ramped from 0 over `kd_warmup_steps`."""
        if self.kd_warmup_steps == 0:
            return 1.0
        return min(step / self.kd_warmup_steps, 1.0)

    def dtw_gamma_at(self, step: int) -> float:
        """Soft-DTW gamma at optimizer step `step`: constant, or linearly annealed when configured."""
        if self.dtw_gamma_end is None:
            return self.dtw_gamma
        progress = min(step / self.dtw_gamma_anneal_steps, 1.0)
        return self.dtw_gamma + progress * (self.dtw_gamma_end - self.dtw_gamma)
