"""The aligned start (docs/method.md, Aligned projector start): the four projectors fitted in closed form on the
two frozen models' states at response positions whose target tokens overlap in the text.

Per example, `O[i, j]` counts the bytes that student target i and teacher target j share (`overlap.py`). A student
position with any overlap gives one row for the maps read at student positions, its teacher side the mixture of the
overlapping teacher positions with weights `w[i, j] = O[i, j] / sum_j O[i, j]` (the attention the query should
produce); a teacher position with any overlap likewise gives one row, with weights over the student positions:

| map | rows at | input | target |
|---|---|---|---|
| `t2s` | student i | `sum_j w[i, j] (N(H_t) + N(E_t(tgt)))_j`, the attention's value input | `H_s,i` |
| `query` | student i | `[E_s(in_i) ; E_s(tgt_i)]` | `sum_j w[i, j] K_j`, `K = N([E_t(in) ; E_t(tgt)])` |
| `s2t` | teacher j | `sum_i w'[j, i] H_s,i` | `H_t,j` |
| `embed_t2s` | teacher j | `E_t(tgt_j)` | `sum_i w'[j, i] E_s(tgt_i)` |

Each map is a ridge fit of its rows (`ridge.py`). The fitted query then gets one scale `c` (`query_scale`).
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ..objective.attention import normalise_per_example
from ..objective.outputs import SideOutputs
from ..objective.responses import Responses, gather_responses
from .overlap import TokenBytes, target_overlap
from .ridge import RidgeNormalEquations, all_reduced

MAPS = ("query", "t2s", "s2t", "embed_t2s")
# Candidate query scales, and the examples of the sample whose attention rows choose among them.
QUERY_SCALES = torch.logspace(-2, 3, 61, dtype=torch.float64)
CALIBRATION_EXAMPLES = 32


@dataclass
class AlignedFit:
    """What the fit used, over every process: rows seen, paired / all response positions per side, query scale."""

    examples: int
    student_pairs: int
    student_positions: int
    teacher_pairs: int
    teacher_positions: int
    query_scale: float


@dataclass
class _CalibrationExample:
    query_inputs: torch.Tensor  # (n', 2 d_s) at the paired student positions
    keys: torch.Tensor  # (m, 2 d_t) every teacher response position
    weights: torch.Tensor  # (n', m) the overlap weights w


def position_overlaps(
    student: Responses, teacher: Responses, student_bytes: TokenBytes, teacher_bytes: TokenBytes
) -> list[torch.Tensor]:
    """Per example, the (n, m) float64 byte overlaps of its student and teacher response targets."""
    overlaps = []
    for index in range(student.lengths.shape[0]):
        student_targets = student.labels[index, : int(student.lengths[index])].tolist()
        teacher_targets = teacher.labels[index, : int(teacher.lengths[index])].tolist()
        counts = target_overlap(student_targets, teacher_targets, student_bytes, teacher_bytes)
        overlaps.append(torch.from_numpy(counts).to(device=student.hidden.device, dtype=torch.float64))
    return overlaps


def regression_rows(
    student: Responses, teacher: Responses, overlaps: list[torch.Tensor]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """`{map: (inputs, targets)}`, float64 rows of every example (see the module's table); positions without an
    overlap give no row, so an example without any gives none."""
    values = normalise_per_example(teacher.hidden, teacher.valid) + normalise_per_example(
        teacher.target_embeds, teacher.valid
    )
    keys = teacher_keys(teacher)
    query_inputs = torch.cat([student.input_embeds, student.target_embeds], dim=-1)
    rows = {name: ([], []) for name in MAPS}

    def add(name, inputs, targets):
        rows[name][0].append(inputs.double())
        rows[name][1].append(targets.double())

    for index, overlap in enumerate(overlaps):
        n, m = overlap.shape
        per_student, per_teacher = overlap.sum(dim=1), overlap.sum(dim=0)
        paired_students, paired_teachers = per_student > 0, per_teacher > 0
        weights = overlap[paired_students] / per_student[paired_students, None]
        teacher_weights = overlap[:, paired_teachers].T / per_teacher[paired_teachers, None]
        add("t2s", weights @ values[index, :m].double(), student.hidden[index, :n][paired_students])
        add("query", query_inputs[index, :n][paired_students], weights @ keys[index, :m].double())
        add("s2t", teacher_weights @ student.hidden[index, :n].double(), teacher.hidden[index, :m][paired_teachers])
        add(
            "embed_t2s",
            teacher.target_embeds[index, :m][paired_teachers],
            teacher_weights @ student.target_embeds[index, :n].double(),
        )
    return {
        name: (torch.cat(inputs), torch.cat(targets)) if inputs else None for name, (inputs, targets) in rows.items()
    }


def teacher_keys(teacher: Responses) -> torch.Tensor:
    """K = N([E_t(in) ; E_t(tgt)]), as `cross_model_attention` builds it."""
    return normalise_per_example(torch.cat([teacher.input_embeds, teacher.target_embeds], dim=-1), teacher.valid)


@torch.no_grad()
def fit_aligned_projectors(
    projectors: nn.Module,
    batches: Iterable[tuple[SideOutputs, SideOutputs]],
    student_bytes: TokenBytes,
    teacher_bytes: TokenBytes,
    ridge: float,
    calibration_examples: int = CALIBRATION_EXAMPLES,
) -> AlignedFit:
    """Fit every projector `projectors` holds (`embed_t2s` may be None) on `(student, teacher)` batches of the
    frozen models, and write them in place; the query's scale is chosen on the first `calibration_examples`
    examples of the batches.

    Under torch.distributed each process passes its own share of the sample, and its share of the calibration
    examples (`calibration_share`): the normal equations and the calibration sums are all-reduced, so every
    process writes the projectors one process fits on the whole sample.
    """
    maps = {name: getattr(projectors, name) for name in MAPS if getattr(projectors, name, None) is not None}
    device = next(projectors.parameters()).device
    equations = {
        name: RidgeNormalEquations(linear.in_features, linear.out_features, device) for name, linear in maps.items()
    }
    counts = torch.zeros(5, dtype=torch.float64, device=device)
    calibration, calibration_room = [], calibration_examples
    for student_side, teacher_side in batches:
        student, teacher = gather_responses(student_side), gather_responses(teacher_side)
        overlaps = position_overlaps(student, teacher, student_bytes, teacher_bytes)
        for name, rows in regression_rows(student, teacher, overlaps).items():
            if name in equations and rows is not None:
                equations[name].add(*rows)
        counts += torch.tensor(
            [
                len(overlaps),
                sum(int((overlap.sum(dim=1) > 0).sum()) for overlap in overlaps),
                float(student.lengths.sum()),
                sum(int((overlap.sum(dim=0) > 0).sum()) for overlap in overlaps),
                float(teacher.lengths.sum()),
            ],
            dtype=torch.float64,
            device=device,
        )
        calibration += _calibration_examples(student, teacher, overlaps[: max(calibration_room, 0)])
        calibration_room -= len(overlaps)
    counts = all_reduced(counts)
    if counts[1] == 0 or counts[3] == 0:
        raise ValueError(
            f"projector_init='aligned' found no student and teacher response tokens covering the same text in "
            f"{int(counts[0])} examples, so there is nothing to fit: check that both tokenizers read the same "
            "responses, or use projector_init='random'."
        )
    for name, linear in maps.items():
        equations[name].all_reduce()
        weight, bias = equations[name].solve(ridge)
        linear.weight.copy_(weight.T.to(linear.weight.dtype))
        if linear.bias is not None:
            linear.bias.copy_(bias.to(linear.bias.dtype))
    scale = query_scale(maps["query"], calibration) if "query" in maps else 1.0
    if "query" in maps:
        maps["query"].weight.mul_(scale)
        if maps["query"].bias is not None:
            maps["query"].bias.mul_(scale)
    return AlignedFit(*(int(count) for count in counts.tolist()), query_scale=scale)


def calibration_share(process_index: int, num_processes: int, total: int = CALIBRATION_EXAMPLES) -> int:
    """How many of its first examples a process calibrates on when the sample is dealt out one example at a time
    (example k to process k % num_processes): its examples among the sample's first `total`, so that the processes
    together calibrate on the examples one process would."""
    return len(range(process_index, total, num_processes))


def _calibration_examples(student, teacher, overlaps) -> list[_CalibrationExample]:
    """The calibration rows of the examples of `overlaps` (the first ones of the batch) with a paired position."""
    examples = []
    keys = teacher_keys(teacher)
    query_inputs = torch.cat([student.input_embeds, student.target_embeds], dim=-1)
    for index, overlap in enumerate(overlaps):
        n, m = overlap.shape
        paired = overlap.sum(dim=1) > 0
        if not paired.any():
            continue
        examples.append(
            _CalibrationExample(
                query_inputs=query_inputs[index, :n][paired].float(),
                keys=keys[index, :m].float(),
                weights=(overlap[paired] / overlap[paired].sum(dim=1, keepdim=True)).float(),
            )
        )
    return examples


def query_scale(query: nn.Linear, calibration: list[_CalibrationExample]) -> float:
    """The scale c of the fitted query that best predicts the overlap weights: among `QUERY_SCALES`, the one that
    minimises the cross-entropy `-sum_i sum_j w[i, j] log a_c[i, j]` of the attention rows `a_c = softmax_j(c A)`
    over the calibration examples of every process.

    Rows are as sharp as the key ranking supports: where tokens repeat (same input and target token, so the same
    key), a sharper row would put its mass on the wrong copy and the cross-entropy rises; so rows come out peaked
    on the overlapping tokens without going one-hot.
    """
    device = query.weight.device
    scales = QUERY_SCALES.to(device)
    losses = torch.zeros_like(scales)
    for example in calibration:
        queries = query(example.query_inputs.to(query.weight.dtype)).double()
        keys = example.keys.double()
        scores = queries @ keys.T / math.sqrt(keys.shape[-1])
        log_attention = torch.log_softmax(scales[:, None, None] * scores, dim=-1)
        losses -= (example.weights.double() * log_attention).sum(dim=(1, 2))
    losses = all_reduced(losses)
    return float(scales[int(losses.argmin())])
