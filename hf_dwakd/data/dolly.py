"""databricks/databricks-dolly-15k's Hub columns as prompt/completion in the paper's template (docs/method.md,
Evaluation protocol)."""

from datasets import Dataset

DOLLY_HUB_COLUMNS = {"instruction", "context", "response"}


def with_dolly_prompts(dataset: Dataset) -> Dataset:
    """databricks-dolly-15k rows (instruction, context, response) as prompt/completion; other datasets unchanged."""
    from ..evaluation import alpaca_prompt

    if not DOLLY_HUB_COLUMNS <= set(dataset.column_names) or "prompt" in dataset.column_names:
        return dataset
    return dataset.map(
        lambda row: {"prompt": alpaca_prompt(row["instruction"], row["context"]), "completion": row["response"]},
        remove_columns=dataset.column_names,
    )
