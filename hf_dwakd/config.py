"""`DWAKDConfig`: TRL's `SFTConfig` plus one field per knob of the DWA-KD method (docs/method.md)."""

from dataclasses import dataclass, field, fields
from typing import Any

from trl import SFTConfig

from .objective import DIVERGENCES, DWAKDLossOptions
from .objective.options import CONFIG_OPTIONS
from .ops.soft_dtw import BACKENDS as DTW_BACKENDS
from .optional import require_matplotlib
from .projector_init import PROJECTOR_INITS
from .registry import get_method, registered_methods
from .teacher_list import (
    PER_TEACHER_FIELDS,
    cache_dir_entry,
    check_per_teacher_fields,
    single_or_list,
    teacher_count,
)

# The `teacher_cache_dtype` choices (`teacher_cache.store` stores each in an Arrow type).
CACHE_DTYPES = ("float32", "bfloat16", "float16")

KD_METHODS = tuple(registered_methods())  # the built-in methods; `registry.py` adds more
DEFAULT_CE_WEIGHT = 0.5  # every method's but dskd's, whose ce_weight follows kd_weight


@dataclass
class DWAKDConfig(SFTConfig):
    r"""
    Configuration for [`DWAKDTrainer`]: every field of [`trl.SFTConfig`] plus the DWA-KD knobs below. Defaults are
    those of docs/method.md: the paper's (arXiv 2602.21669), or the released code's where the paper states none.

    Teacher (several teachers: docs/method.md, Several teachers):
        teacher_model_name_or_path (`str` or `list[str]`, *optional*): Hub id or path of the teacher, when
            `teacher_model` is not passed to the trainer; a list names several teachers, distilled at once.
        teacher_model_init_kwargs (`dict` or JSON `str`, *optional*): keyword arguments for
            `AutoModelForCausalLM.from_pretrained` when a teacher is loaded from a name (shared by every teacher).
        teacher_tokenizer_name_or_path (`str` or `list[str]`, *optional*): the teacher's tokenizer; defaults to the
            teacher's name. With several teachers, one entry per teacher (None: that teacher's own).
        teacher_weights (`list[float]`, *optional*): each teacher's share of the distillation terms, >= 0,
            divided by their sum; equal when unset.
        teacher_cache_dir (`str` or `list`, *optional*): a teacher cache (`hf-dwakd cache-teacher`): train from the
            stored teacher states with only the teacher's embedding and output layers loaded. Also where the build
            writes. With several teachers, one entry per teacher: a folder, or None (`none` on the command line)
            for a teacher that runs live.
        teacher_cache_dtype (`str`, defaults to `"float32"`): dtype the build stores the states in, one of
            `float32`, `bfloat16`, `float16`.

    Objective:
        kd_method (`str`, defaults to `"dwakd"`): the distillation objective, a method of the registry
            (`registry.py`): `dwakd`, or a baseline of docs/method.md, Baselines (`sft` needs no teacher).
            Baselines train `ce_weight * CE + kd_weight * KD`.
        max_prompt_length (`int`, defaults to `256`): prompt tokens kept on each side (`max_length` defaults to 512).
        ce_weight, kd_weight, dtw_weight (`float`, defaults to `0.5`, `0.5`, `0.2`): weights of the student
            cross-entropy, the weighted dual-space KD and the Soft-DTW alignment. For `dskd`, an unset
            `ce_weight` is `1 - kd_weight` (DSKD's `(1 - kd_rate) CE + kd_rate KD`), and a pair set by the user
            must sum to 1.
        kd_temperature (`float`, defaults to `2.0`): temperature inside every KL term.
        kd_divergence (`str`, defaults to `"forward_kl"`): one of `DIVERGENCES`, used in the student space.
        kd_teacher_divergence (`str`, *optional*): the teacher space's divergence; unset, `kd_divergence` for
            `dwakd` and forward KL for `dskd`. The released DWA-KD/DSKD scripts keep forward KL in the teacher
            space: `kd_divergence: skewed_reverse_kl` with `kd_teacher_divergence: forward_kl` reproduces them.
        kd_skew (`float`, defaults to `0.1`): mixture weight of the skewed divergences.
        use_entropy_weighting, use_teacher_gate (`bool`, default `True`): ablation switches of the token weights.
        student_weight_normalization (`str`, defaults to `"entropy"`): `"entropy"` (the released DWA-KD code)
            normalises H_s per sequence and multiplies by the raw gate g; `"product"` normalises H_s * g (this
            project's default before the quality benchmark showed it worse, see docs/method.md).
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
        unpadded_forward (`bool`, defaults to `True`): run each model on the batch's real tokens only (one
            sequence, position ids restarting per row; `hf_dwakd.unpadded`), checked row by row against the padded
            forward on the first batch's rows of different lengths, every process taking the same decision; models
            that take no position ids (ALiBi: Bloom, MPT) run padded. Unlike TRL's `padding_free`, the collator
            still pads; only the forward skips padding.
        projector_learning_rate (`float`, defaults to `1e-3`): learning rate of the projectors' parameter group.
        projector_init (`str`, defaults to `"random"`): how the projectors start, once, before the first step of
            a run that does not resume from a checkpoint (docs/method.md, Projector start): `"random"` (PyTorch's
            default initialisation), `"pseudo_inverse"` (DSKDv2's `s2t` from the pseudo-inverse of the teacher's
            LM head over the token strings both vocabularies share; the others random) or `"aligned"` (all of
            them fitted in closed form on both frozen models' states at response positions whose target tokens
            cover the same characters).
        projector_init_rows (`int`, defaults to `256`): training rows the aligned fit runs both models over.
        projector_init_ridge (`float`, defaults to `1e-3`): the aligned fit's ridge, relative to the mean variance
            of each map's inputs.
        alignment_plot_steps (`int`, defaults to `0`): draw the alignment picture of the first training example
            every N steps (`hf_dwakd.inspection`); 0 = off.

    On-policy distillation (TRL's `GKDConfig` names and meanings; `hf_dwakd.on_policy`, README "On-policy"):
        lmbda (`float`, defaults to `0.0`): share of optimizer steps whose responses the student samples, drawn
            per step from `seed`; 0 trains on the dataset's responses only.
        seq_kd (`bool`, defaults to `False`): on the steps not drawn on-policy, the teacher samples the responses
            (sequence-level KD) instead of the dataset giving them.
        max_new_tokens (`int`, defaults to `128`): most tokens sampled per response.
        temperature (`float`, defaults to `0.9`): sampling temperature (the KL terms use `kd_temperature`).
        on_policy_ce_weight (`float`, defaults to `0.0`): `ce_weight` on the student-sampled steps.

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
        default=256,
        metadata={"help": "Maximum prompt tokens on each side; longer prompts are truncated (paper: 256)."},
    )
    teacher_model_name_or_path: list[str] | str | None = field(
        default=None,
        metadata={"help": "Hub id or local path of the teacher model; several for several teachers.", "nargs": "+"},
    )
    teacher_model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "Keyword arguments (a dict or JSON string) for loading the teacher from its name."},
    )
    teacher_tokenizer_name_or_path: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "Hub id or local path of the teacher's tokenizer (default: the teacher's); one per teacher.",
            "nargs": "+",
        },
    )
    teacher_weights: list[float] | None = field(
        default=None,
        metadata={"help": "Each teacher's weight (>= 0), divided by their sum; equal when unset."},
    )
    teacher_cache_dir: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "Teacher cache folder (hf-dwakd cache-teacher): train without running the teacher. With several "
            "teachers one entry each, `none` for a teacher that runs live.",
            "nargs": "+",
        },
    )
    teacher_cache_dtype: str = field(
        default="float32",
        metadata={"help": f"dtype the teacher cache stores its states in, one of {tuple(CACHE_DTYPES)}."},
    )
    kd_method: str = field(
        default="dwakd", metadata={"help": f"Distillation objective, one of {KD_METHODS} (see registry.py)."}
    )
    ce_weight: float | None = field(
        default=None,
        metadata={
            "help": "Weight of the student cross-entropy (lambda_ce). Unset: 0.5, except for dskd, where it is "
            "1 - kd_weight (DSKD's (1 - kd_rate) CE + kd_rate KD); dskd refuses a pair that does not sum to 1."
        },
    )
    kd_weight: float = field(default=0.5, metadata={"help": "Weight of the weighted dual-space KD (lambda_kd)."})
    dtw_weight: float = field(default=0.2, metadata={"help": "Weight of the Soft-DTW alignment (lambda_dtw)."})
    kd_temperature: float = field(default=2.0, metadata={"help": "Temperature tau inside every KL term."})
    kd_divergence: str = field(
        default="forward_kl",
        metadata={
            "help": f"Divergence of the student KD space (and by default the teacher's), one of {tuple(DIVERGENCES)}."
        },
    )
    kd_teacher_divergence: str | None = field(
        default=None,
        metadata={
            "help": "Divergence of the teacher KD space. Unset: kd_divergence for dwakd, forward_kl for dskd (as "
            "DSKD's code). The released DWA-KD and DSKD scripts keep forward_kl here whatever kd_divergence is."
        },
    )
    kd_skew: float = field(default=0.1, metadata={"help": "Mixture weight of the skewed divergences, in (0, 1)."})
    use_entropy_weighting: bool = field(
        default=True, metadata={"help": "Ablation: entropy-based token weights (off = all weights 1)."}
    )
    use_teacher_gate: bool = field(
        default=True, metadata={"help": "Ablation: multiply the student entropy by the teacher confidence gate."}
    )
    student_weight_normalization: str = field(
        default="entropy",
        metadata={
            "help": "What the per-sequence normalisation of the student KD weights covers: 'entropy' (H_s alone, "
            "then times the raw gate, as the released DWA-KD code does) or 'product' (H_s * gate)."
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
    unpadded_forward: bool = field(
        default=True,
        metadata={
            "help": "Run each model's forward on the batch's real tokens only, as one sequence with position ids "
            "restarting per row, and put its outputs back in the padded layout (same values; no layer runs on "
            "padding). Checked row by row on the first batch (on rows of different lengths): a model whose "
            "attention does not keep the rows apart runs padded, with a warning; one that takes no position ids "
            "(ALiBi) runs padded."
        },
    )
    projector_learning_rate: float = field(
        default=1e-3, metadata={"help": "Learning rate of the projectors' optimizer parameter group."}
    )
    projector_init: str = field(
        default="random",
        metadata={
            "help": f"How the projectors start before the first step, one of {PROJECTOR_INITS}: random, DSKDv2's "
            "pseudo-inverse s2t, or all fitted on both frozen models' states at response positions whose target "
            "tokens cover the same characters (docs/method.md, Projector start)."
        },
    )
    projector_init_rows: int = field(
        default=256, metadata={"help": "projector_init='aligned': training rows both models run over for the fit."}
    )
    projector_init_ridge: float = field(
        default=1e-3,
        metadata={"help": "projector_init='aligned': ridge of each fit, relative to the mean variance of its inputs."},
    )
    alignment_plot_steps: int = field(
        default=0,
        metadata={
            "help": "Draw the first training example's cross-model attention, band and Soft-DTW alignment before "
            "training and every N optimizer steps, into output_dir/alignment/ and the TensorBoard/W&B trackers of "
            "`report_to` (needs `pip install hf-dwakd[plot]`). 0 = off."
        },
    )
    lmbda: float = field(
        default=0.0,
        metadata={
            "help": "Share of optimizer steps that are on-policy: the student samples a response to each prompt of "
            "the step's batches and the teacher judges it. Drawn per step from `seed`. 0 = off-policy (the "
            "dataset's responses), 1 = always on-policy."
        },
    )
    seq_kd: bool = field(
        default=False,
        metadata={
            "help": "Sequence-level KD: on the steps not drawn on-policy, the teacher samples each response (with "
            "its own tokenizer) instead of the dataset giving it."
        },
    )
    max_new_tokens: int = field(
        default=128, metadata={"help": "Most tokens sampled per response on on-policy and seq_kd steps."}
    )
    temperature: float = field(
        default=0.9,
        metadata={"help": "Sampling temperature of on-policy and seq_kd responses (the KL terms use kd_temperature)."},
    )
    on_policy_ce_weight: float = field(
        default=0.0,
        metadata={
            "help": "ce_weight on the steps the student samples. There the CE target is the student's own sample, "
            "so a non-zero weight only makes the student more certain of what it already says (self-training, "
            "ms-swift's sft_alpha on on-policy data); 0 trains those steps on the teacher's terms alone, as GKD."
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
        method = get_method(self.kd_method)
        self._settle_teacher_lists(method)
        self._check_fields_belong_to(method)
        for name, value in (method.defaults(self) if method.defaults is not None else {}).items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.ce_weight is None:
            self.ce_weight = DEFAULT_CE_WEIGHT
        if method.check is not None:
            method.check(self)
        if self.teacher_cache_dtype not in CACHE_DTYPES:
            raise ValueError(
                f"`teacher_cache_dtype` must be one of {tuple(CACHE_DTYPES)}, got {self.teacher_cache_dtype!r}."
            )
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
        if self.alignment_plot_steps < 0:
            raise ValueError(f"`alignment_plot_steps` must be >= 0 (0 = off), got {self.alignment_plot_steps}.")
        if self.alignment_plot_steps:
            require_matplotlib()
        if self.projector_learning_rate <= 0:
            raise ValueError(f"`projector_learning_rate` must be > 0, got {self.projector_learning_rate}.")
        if self.projector_init not in PROJECTOR_INITS:
            raise ValueError(f"`projector_init` must be one of {PROJECTOR_INITS}, got {self.projector_init!r}.")
        if isinstance(self.projector_init_rows, bool) or self.projector_init_rows < 1:
            raise ValueError(f"`projector_init_rows` must be a positive int, got {self.projector_init_rows!r}.")
        if not self.projector_init_ridge > 0:
            raise ValueError(f"`projector_init_ridge` must be > 0, got {self.projector_init_ridge!r}.")
        if self.max_length is None or self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"`max_prompt_length` ({self.max_prompt_length}) must be smaller than `max_length` "
                f"({self.max_length}) so that some response survives truncation."
            )
        self._check_on_policy_fields()
        if self.use_liger_kernel:
            raise ValueError(
                "`use_liger_kernel=True` is not supported by DWAKDTrainer: the objective needs the full logits and "
                "hidden states of both models. Set `use_liger_kernel=False`."
            )
        if self.packing or self.padding_free:
            raise ValueError(
                "`packing` and `padding_free` are not supported by DWAKDTrainer: each example is aligned across two "
                "tokenizers. Set `packing=False` and `padding_free=False`; the models' forwards already skip "
                "padding (`unpadded_forward`, on by default)."
            )

    def _settle_teacher_lists(self, method):
        """Lists of several teachers must agree in length and the method must support several teachers
        (docs/method.md, Several teachers); then a list of one entry is that entry: the single teacher."""
        if isinstance(self.teacher_cache_dir, (list, tuple)):
            self.teacher_cache_dir = [cache_dir_entry(entry) for entry in self.teacher_cache_dir]
        if self.teacher_weights is not None and not isinstance(self.teacher_weights, (list, tuple)):
            self.teacher_weights = [self.teacher_weights]
        count = teacher_count(self.teacher_model_name_or_path)
        if count:
            self.check_teachers(count, "`teacher_model_name_or_path`")
        else:  # the teachers come with the trainer: the lists must at least agree with each other
            lengths = {name: teacher_count(getattr(self, name)) for name in PER_TEACHER_FIELDS}
            if len(set(lengths.values()) - {0}) > 1:
                given = ", ".join(f"`{name}` {length}" for name, length in lengths.items() if length)
                raise ValueError(f"The per-teacher lists differ in length ({given}): give one entry per teacher.")
            if max(lengths.values()):
                self.check_teachers(max(lengths.values()), "the per-teacher lists")
        for name in ("teacher_model_name_or_path", "teacher_tokenizer_name_or_path", "teacher_cache_dir"):
            setattr(self, name, single_or_list(getattr(self, name)))

    def check_teachers(self, count: int, source: str) -> None:
        """Refuse, naming the field, per-teacher settings that do not fit `count` teachers (named by `source`)."""
        check_per_teacher_fields(self, count, source)
        method = get_method(self.kd_method)
        if count > 1 and method.needs_teacher and not method.several_teachers:
            several = [name for name, other in registered_methods().items() if other.several_teachers]
            raise ValueError(
                f"{source} names {count} teachers, but kd_method={self.kd_method!r} distils from one teacher only: "
                f"give one teacher, or choose a kd_method that supports several ({', '.join(several)})."
            )
        if count > 1 and self.samples_responses:
            raise ValueError(
                f"`lmbda` > 0 or `seq_kd` samples responses, which is built for one teacher, but {source} names "
                f"{count} teachers: give one teacher, or set `lmbda=0` and `seq_kd=False`."
            )
        if count > 1 and self.alignment_plot_steps:
            raise ValueError(
                f"`alignment_plot_steps` draws one teacher's alignment, but {source} names {count} teachers: set it "
                "to 0 and draw each teacher with `hf-dwakd inspect`."
            )

    def loss_options(self, step: int = 0) -> DWAKDLossOptions:
        """The objective's options at optimizer step `step` (gamma annealed when configured)."""
        # `kd_student_scale` is the one option without a field of its name: the KD warm-up's value at `step`.
        values = {name: getattr(self, name) for name in CONFIG_OPTIONS}
        values["dtw_gamma"] = self.dtw_gamma_at(step)
        values["kd_student_scale"] = self.kd_warmup_scale_at(step)
        values["use_dtw"] = self.use_dtw and self.dtw_weight > 0
        try:
            return DWAKDLossOptions(**values)
        except ValueError as error:
            raise ValueError(f"DWAKDConfig: {error}") from None

    def _check_on_policy_fields(self):
        if not 0 <= self.lmbda <= 1:
            raise ValueError(f"`lmbda` is the share of on-policy steps, in [0, 1]; got {self.lmbda}.")
        if self.max_new_tokens < 1:
            raise ValueError(f"`max_new_tokens` must be >= 1, got {self.max_new_tokens}.")
        if not self.temperature > 0:
            raise ValueError(f"`temperature` (sampling) must be > 0, got {self.temperature}.")
        if self.on_policy_ce_weight < 0:
            raise ValueError(f"`on_policy_ce_weight` must be >= 0, got {self.on_policy_ce_weight}.")
        if self.lmbda == 0 and self.on_policy_ce_weight != 0:
            raise ValueError("`on_policy_ce_weight` only applies to on-policy steps: set `lmbda` > 0, or remove it.")
        if not self.samples_responses:
            return
        switch = "`lmbda` > 0" if self.lmbda > 0 else "`seq_kd`"
        if self.teacher_cache_dir is not None:
            raise ValueError(
                f"{switch} samples new responses, which a teacher cache cannot serve: unset `teacher_cache_dir` "
                "(run the teacher live), or set `lmbda=0` and `seq_kd=False`."
            )
        if not self.needs_teacher:
            raise ValueError(
                f"{switch} needs a teacher to judge (or sample) the responses, and kd_method={self.kd_method!r} "
                "has none: choose a method with a teacher, or set `lmbda=0` and `seq_kd=False`."
            )
        if self.lmbda > 0 and self.kd_weight == 0:
            raise ValueError(
                "`lmbda` > 0 with `kd_weight=0`: the on-policy steps would learn nothing from the teacher. Set "
                "`kd_weight` > 0."
            )

    def _check_fields_belong_to(self, method):
        """A field that only other methods read is refused when set away from its default (it would do nothing).

        The teacher fields are not among them: a pair's recipe stays usable with `kd_method="sft"`, which ignores
        them. `ce_weight` at 0.5 counts as unset: that is what it means for every method but dskd.
        """
        defaults = {f.name: f.default for f in fields(self)}
        owners = {}
        for other in registered_methods().values():
            for name in other.fields:
                if name not in defaults:
                    raise ValueError(f"kd_method {other.name!r} declares the field `{name}`, which DWAKDConfig lacks.")
                owners.setdefault(name, []).append(other.name)
        for name, methods in owners.items():
            value = getattr(self, name)
            unset = value == defaults[name] or (name == "ce_weight" and value == DEFAULT_CE_WEIGHT)
            if method.name not in methods and not unset:
                raise ValueError(
                    f"`{name}` belongs to kd_method {' / '.join(methods)} and has no effect with "
                    f"kd_method={self.kd_method!r}: remove it, or choose one of those methods."
                )

    @property
    def samples_responses(self) -> bool:
        """Whether some steps train on sampled responses (`lmbda` > 0 or `seq_kd`)."""
        return self.lmbda > 0 or self.seq_kd

    @property
    def needs_teacher(self) -> bool:
        return get_method(self.kd_method).needs_teacher

    @property
    def needs_projectors(self) -> bool:
        return get_method(self.kd_method).needs_projectors

    @property
    def needs_embedding_projector(self) -> bool:
        embedding_projector = get_method(self.kd_method).embedding_projector
        return self.needs_projectors and embedding_projector is not None and embedding_projector(self)

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
