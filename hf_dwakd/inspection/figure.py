"""Draw `AlignmentNumbers` as a PNG (and write them as JSON beside it); matplotlib is the optional extra `plot`."""

import json
import math
import textwrap
from pathlib import Path

from ..optional import require_matplotlib
from .numbers import AlignmentNumbers

MAX_LABELS = 80  # token labels per axis; longer sequences label every k-th token
INCHES_PER_TOKEN = 0.13
LABEL_FONT_SIZE = 6.5


def alignment_figure(numbers: AlignmentNumbers):
    """A matplotlib `Figure`: the attention a_t2s with its band (left), the Soft-DTW expected alignment (right)."""
    require_matplotlib()
    from matplotlib.figure import Figure

    width, height = _size(numbers)
    figure = Figure(figsize=(width, height), layout="constrained")
    _draw(figure, numbers)
    return figure


def teachers_figure(numbers_by_teacher: dict[str, AlignmentNumbers]):
    """One row of `alignment_figure`'s two panels per teacher (several teachers at once), each titled by its
    teacher's name."""
    require_matplotlib()
    from matplotlib.figure import Figure

    sizes = [_size(numbers) for numbers in numbers_by_teacher.values()]
    figure = Figure(figsize=(max(w for w, _ in sizes), sum(h for _, h in sizes)), layout="constrained")
    rows = figure.subfigures(len(sizes), 1, squeeze=False, height_ratios=[h for _, h in sizes])[:, 0]
    for row, (name, numbers) in zip(rows, numbers_by_teacher.items()):
        _draw(row, numbers, heading=f"teacher {name}")
    return figure


def save_alignment(numbers: AlignmentNumbers, png_path, figure=None) -> tuple[Path, Path]:
    """Write the picture (`figure`, drawn here when None) to `png_path` and its numbers to the same path ending in
    `.json`; returns both paths."""
    return _save(figure or alignment_figure(numbers), numbers.to_dict(), png_path)


def save_teachers_alignment(numbers_by_teacher: dict[str, AlignmentNumbers], png_path) -> tuple[Path, Path]:
    """`save_alignment` with several teachers: one row per teacher; the JSON maps each teacher's name to its
    numbers."""
    numbers = {name: value.to_dict() for name, value in numbers_by_teacher.items()}
    return _save(teachers_figure(numbers_by_teacher), numbers, png_path)


def _save(figure, numbers: dict, png_path) -> tuple[Path, Path]:
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png_path, dpi=100)
    json_path = png_path.with_suffix(".json")
    json_path.write_text(json.dumps(numbers, ensure_ascii=False), encoding="utf-8")
    return png_path, json_path


def _size(numbers) -> tuple[float, float]:
    """(width, height) in inches of one row of two panels."""
    n, m = len(numbers.student_tokens), len(numbers.teacher_tokens)
    panel_width = max(3.5, min(m, MAX_LABELS) * INCHES_PER_TOKEN)
    panel_height = max(3.5, min(n, MAX_LABELS) * INCHES_PER_TOKEN)
    return 2 * panel_width + 3.5, panel_height + 2.2


def _draw(figure, numbers, heading=None):
    """The two panels of `numbers` on `figure` (a `Figure` or one of its `SubFigure`s)."""
    n, m = len(numbers.student_tokens), len(numbers.teacher_tokens)
    panels = figure.subplots(1, 2, sharey=True)
    matrices = (
        ("cross-model attention a_t2s and band", numbers.attention, "viridis"),
        ("Soft-DTW expected alignment (hidden pair)", numbers.expected_alignment, "magma"),
    )
    for axes, (title, matrix, colormap) in zip(panels, matrices):
        image = axes.imshow(matrix, aspect="auto", interpolation="nearest", cmap=colormap, vmin=0)
        figure.colorbar(image, ax=axes, shrink=0.8, pad=0.01)
        _draw_band(axes, numbers)
        axes.set_title(title, fontsize=9)
        axes.set_xlabel("teacher response tokens", fontsize=8)
        _label_axis(axes.set_xticks, numbers.teacher_tokens, rotation=90)
        axes.set_xlim(-0.5, m - 0.5)
        axes.set_ylim(n - 0.5, -0.5)
    panels[0].set_ylabel("student response tokens", fontsize=8)
    _label_axis(panels[0].set_yticks, numbers.student_tokens, rotation=0)
    panels[0].legend(loc="upper right", fontsize=6, framealpha=0.7)
    width = figure.get_figwidth() if hasattr(figure, "get_figwidth") else figure.figure.get_figwidth()
    summary = _summary(numbers, characters_per_line=int(width * 15))
    figure.suptitle(f"{heading}\n{summary}" if heading else summary, fontsize=8)


def _draw_band(axes, numbers):
    """The band's centre and edges, one point per row, in the image's 0-based column coordinates."""
    rows = range(len(numbers.student_tokens))
    centre = [c - 1 for c in numbers.band_center]
    lower = [c - w for c, w in zip(centre, numbers.band_width)]
    upper = [c + w for c, w in zip(centre, numbers.band_width)]
    axes.plot(centre, rows, color="white", linewidth=1.2, label="band centre c_i")
    axes.plot(lower, rows, color="white", linewidth=0.9, linestyle="--", label="band edges c_i ± w_i")
    axes.plot(upper, rows, color="white", linewidth=0.9, linestyle="--")


def _label_axis(set_ticks, tokens, rotation):
    step = max(1, math.ceil(len(tokens) / MAX_LABELS))
    positions = list(range(0, len(tokens), step))
    set_ticks(positions, [tokens[i] for i in positions], fontsize=LABEL_FONT_SIZE, rotation=rotation)


def _summary(numbers, characters_per_line):
    step = f"step {numbers.step} · " if numbers.step is not None else ""
    first = (
        f"{step}mean row entropy {numbers.mean_row_entropy:.2f} nats · attention mass inside the band "
        f"{numbers.band_mass:.0%} · Soft-DTW gamma {numbers.gamma:g}"
    )
    losses = "this example's loss: " + ", ".join(f"{name}\u00a0{value:.3g}" for name, value in numbers.losses.items())
    return "\n".join([first, *textwrap.wrap(losses, characters_per_line)])
