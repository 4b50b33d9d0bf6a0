"""The student's model card (`README.md`): benchmark scores as the Hub reads them, and the teacher.

`hf-dwakd evaluate --update_model_card` writes each benchmark's score into the evaluated folder's card twice: as a
`model-index` result in the metadata (what the Hub shows as evaluation results) and as a row of a table in the
text. The trainer writes a new card (TRL's template) at each checkpoint and push; `complete_trainer_card` carries
the earlier card's scores into it and names the teacher, so a push after an evaluation uploads them.
"""

from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard

CARD_NAME = "README.md"
TASK_TYPE, TASK_NAME = "text-generation", "Text Generation"
METRIC_TYPE, METRIC_NAME = "rouge", "ROUGE-L"
# The scores section lies between these lines, so that a later evaluation can replace its rows.
SCORES_BEGIN = "<!-- hf-dwakd scores: rows replaced by each `hf-dwakd evaluate --update_model_card` -->"
SCORES_END = "<!-- end of hf-dwakd scores -->"
TABLE_HEADER = "| Benchmark | ROUGE-L | Seeds | Examples |\n|---|---|---|---|"
TEACHER_HEADING = "## Teacher"
# New sections go before this heading of TRL's template when the card has it, else at the end.
SECTIONS_BEFORE = "## Training procedure"


@dataclass(frozen=True)
class BenchmarkScore:
    """One benchmark's ROUGE-L: its mean over sampling seeds and their standard deviation."""

    title: str  # as the table and the Hub show it, e.g. "Dolly"
    dataset_id: str  # the benchmark's Hub dataset, e.g. "MiniLLM/dolly"
    mean: float
    std: float
    seeds: int
    examples: int

    def eval_result(self) -> EvalResult:
        return EvalResult(
            task_type=TASK_TYPE,
            task_name=TASK_NAME,
            dataset_type=self.dataset_id,
            dataset_name=self.title,
            metric_type=METRIC_TYPE,
            metric_name=METRIC_NAME,
            metric_value=self.mean,
        )

    def table_row(self) -> str:
        return f"| {self.title} | {self.mean:.2f} ± {self.std:.2f} | {self.seeds} | {self.examples} |"


def write_scores(folder, model_name: str, scores: list[BenchmarkScore], protocol: str) -> Path:
    """Write `scores` into `folder`'s card (a minimal card when it has none) and return its path.

    A benchmark already on the card keeps its place and takes the new value; the others stay. `model_name` names
    the model in `model-index` when the card names none; `protocol` says how the scores were computed.
    """
    path = Path(folder) / CARD_NAME
    card = (
        ModelCard.load(path)
        if path.is_file()
        else ModelCard(f"---\nlibrary_name: transformers\n---\n\n# {model_name}\n")
    )
    results = list(card.data.eval_results or [])
    for score in scores:
        new = score.eval_result()
        same = [index for index, old in enumerate(results) if new.is_equal_except_value(old)]
        if same:
            results[same[0]] = new
        else:
            results.append(new)
    card.data.eval_results = results
    card.data.model_name = card.data.model_name or model_name

    rows = dict(_table_rows(card.text))
    rows.update({score.title: score.table_row() for score in scores})
    section = "\n".join(
        [SCORES_BEGIN, "## Evaluation", "", protocol, "", TABLE_HEADER, *rows.values(), "", SCORES_END]
    )
    earlier = _between(card.text, SCORES_BEGIN, SCORES_END)
    card.text = card.text.replace(earlier, section) if earlier else _with_section(card.text, section)
    card.save(path)
    return path


def read_card(folder) -> ModelCard | None:
    path = Path(folder) / CARD_NAME
    return ModelCard.load(path) if path.is_file() else None


def complete_trainer_card(folder, earlier: ModelCard | None, teacher: str | None, method: str) -> None:
    """Add to the card the trainer just wrote in `folder` the teacher (None: no teacher; "": a teacher built in
    memory, without a name) and the scores of the `earlier` card."""
    path = Path(folder) / CARD_NAME
    card = ModelCard.load(path)
    text = card.text
    if teacher is not None:
        named = f"the teacher model `{teacher}`" if teacher else "a teacher model built in memory (it has no name)"
        text = _with_section(text, f"{TEACHER_HEADING}\n\nDistilled from {named} with `{method}`.")
    if earlier is not None and earlier.data.eval_results:
        card.data.eval_results = earlier.data.eval_results
        card.data.model_name = card.data.model_name or earlier.data.model_name
    scores = _between(earlier.text, SCORES_BEGIN, SCORES_END) if earlier is not None else None
    if scores is not None:
        text = _with_section(text, scores)
    card.text = text
    card.save(path)


def _with_section(text: str, section: str) -> str:
    at = text.find(f"\n{SECTIONS_BEFORE}")
    if at < 0:
        return f"{text.rstrip()}\n\n{section}\n"
    return f"{text[:at].rstrip()}\n\n{section}\n\n{text[at + 1 :]}"


def _between(text: str, begin: str, end: str) -> str | None:
    """The part of `text` from the `begin` line to the `end` line, both included, or None."""
    start = text.find(begin)
    stop = text.find(end, start)
    if start < 0 or stop < 0:
        return None
    return text[start : stop + len(end)]


def _table_rows(text: str) -> list[tuple[str, str]]:
    """`(benchmark, row)` for each row of the scores table in `text`, in order."""
    part = _between(text, SCORES_BEGIN, SCORES_END) or ""
    rows = part.split(TABLE_HEADER, 1)[-1] if TABLE_HEADER in part else ""
    return [(line.split("|")[1].strip(), line) for line in rows.splitlines() if line.startswith("| ")]
