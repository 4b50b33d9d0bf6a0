"""The registry of distillation methods: each `kd_method` declares itself once, beside its loss.

A method module ends with `register_method(DistillationMethod(...))`, as PEFT's tuners call
`register_peft_method`. `DWAKDConfig` reads the registry to check `kd_method` and which fields belong to which
method; `DWAKDTrainer` reads it to load a teacher, attach projectors, build an aligner and scale the logged
token-sum metrics; `methods.distillation_loss` calls the method's `loss`. The built-in methods live in
`objective/dwakd.py` and `baselines/`, which the package (`hf_dwakd/__init__.py`) imports, as PEFT's package
imports its tuners; this module imports nothing of theirs.

    register_method(
        DistillationMethod(name="my_kd", loss=my_loss, fields=("ce_weight", "kd_weight"), token_sum_metrics={"ce"})
    )
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LossContext:
    """What the trainer holds besides the two models' outputs: the projectors (for methods that need them), the
    aligner (built by the method's `build_aligner`), and the optimizer step (for annealed knobs)."""

    projectors: Any = None
    aligner: Any = None
    step: int = 0


@dataclass(frozen=True)
class DistillationMethod:
    """One `kd_method`.

    name: the value of `DWAKDConfig.kd_method` (lower case, a Python identifier).
    loss: `loss(args, student, teacher, num_items_in_batch, context) -> (loss, metrics)`, with `args` the
        `DWAKDConfig`, `student`/`teacher` the two `SideOutputs` (`teacher` None without one), `context` a
        `LossContext`; `metrics` are detached scalars for logging.
    fields: the `DWAKDConfig` fields this method reads that not every method reads. A field declared by some
        method and set away from its default for a method that does not declare it is refused.
    needs_teacher: whether a teacher model is loaded (and its tokenizer used).
    needs_projectors: whether `DWAKDProjectors` are attached to the student and trained.
    embedding_projector: `embedding_projector(args) -> bool`, whether the projectors need `embed_t2s`.
    build_aligner: `build_aligner(args, student_tokenizer, teacher_tokenizer)`, built once by the trainer and
        passed as `context.aligner` (MinED's vocabulary map and token alignment).
    token_sum_metrics: the metrics that are token sums divided by `num_items_in_batch` (they are rescaled when
        logged over accumulation steps and processes); the others are means.
    defaults: `defaults(args) -> {field: value}`, the method's values for fields left unset (None), computed
        from the others when the config is built (dskd: `ce_weight = 1 - kd_weight`).
    check: `check(args)`, run when the config is built, after the defaults: raises `ValueError` naming the field
        for settings the method refuses.
    several_teachers: whether the method distils from several teachers at once: its loss is then computed with
        each teacher (its own projectors and aligner) and the results weighted by `teacher_weights`
        (docs/method.md, Several teachers). Off by default: the config refuses several teachers for such a method.
    """

    name: str
    loss: Callable[..., tuple[Any, dict[str, Any]]]
    fields: tuple[str, ...] = ()
    needs_teacher: bool = True
    needs_projectors: bool = False
    embedding_projector: Callable[[Any], bool] | None = None
    build_aligner: Callable[[Any, Any, Any], Any] | None = None
    token_sum_metrics: frozenset[str] = field(default_factory=frozenset)
    defaults: Callable[[Any], dict[str, Any]] | None = None
    check: Callable[[Any], None] | None = None
    several_teachers: bool = False

    def __post_init__(self):
        if not (self.name.isidentifier() and self.name.islower()):
            raise ValueError(f"A method name must be a lower-case identifier, got {self.name!r}.")
        if self.needs_projectors and not self.needs_teacher:
            raise ValueError(f"Method {self.name!r}: projectors map between two models, so it needs a teacher.")
        object.__setattr__(self, "fields", tuple(self.fields))
        object.__setattr__(self, "token_sum_metrics", frozenset(self.token_sum_metrics))


_METHODS: dict[str, DistillationMethod] = {}


def register_method(method: DistillationMethod) -> DistillationMethod:
    """Make `method` available as `DWAKDConfig(kd_method=method.name)`. Names are unique."""
    if not isinstance(method, DistillationMethod):
        raise TypeError(f"register_method takes a DistillationMethod, got {type(method).__name__}.")
    if method.name in _METHODS:
        raise ValueError(f"A method called {method.name!r} is already registered; choose another name.")
    _METHODS[method.name] = method
    return method


def registered_methods() -> dict[str, DistillationMethod]:
    """Every method by name, in registration order (the built-in ones first)."""
    return dict(_METHODS)


def get_method(name: str) -> DistillationMethod:
    methods = registered_methods()
    if name not in methods:
        raise ValueError(f"`kd_method` must be one of {tuple(methods)}, got {name!r}.")
    return methods[name]
