"""Fit an example into `max_length` tokens with at most `max_prompt_length` prompt tokens, on every side at once.

As in the DSKD/MiniLLM code (and this project's evaluation), a long prompt keeps its start; then the response is
cut from its end. Cuts are made at character positions where no token of any side being cut spans across, so
sides that read the same text keep the same characters. The EOS survives only when the whole completion does.
"""

import numpy as np

from ..objective.outputs import IGNORE_INDEX
from .tokens import SideTokens


def choose_window(sides: list[SideTokens], max_length: int, max_prompt_length: int) -> tuple[int, int] | None:
    """`(prompt_end, response_end)`: keep prompt characters before the first, response characters before the second.

    All `sides` must read the same text. Returns None when not a single response token fits.
    """
    completion_start = sides[0].completion_start
    text_length = sides[0].text_length
    prompt_lengths = [int((~side.is_response).sum()) for side in sides]
    if all(
        length <= max_prompt_length and len(side.ids) <= max_length for side, length in zip(sides, prompt_lengths)
    ):
        return completion_start, text_length

    cuts = np.flatnonzero(np.logical_and.reduce([_cut_positions(side) for side in sides]))
    # Cutting at the completion start keeps every prompt token, even where a response token straddles it.
    prompt_cuts = np.append(cuts[cuts < completion_start], completion_start)
    prompt_kept = [_count_ending_by(side.ends[~side.is_response], prompt_cuts) for side in sides]
    prompt_fits = np.logical_and.reduce([kept <= max_prompt_length for kept in prompt_kept])
    best = int(np.flatnonzero(prompt_fits)[-1])  # cutting at 0 keeps at most a BOS, so one always fits

    response_cuts = cuts[cuts > completion_start]
    fits = np.ones(len(response_cuts), dtype=bool)
    for side, kept in zip(sides, prompt_kept):
        response_kept = _count_ending_by(side.ends[side.is_response], response_cuts)
        fits &= (response_kept >= 1) & (kept[best] + response_kept <= max_length)
    if not fits.any():
        return None
    return int(prompt_cuts[best]), int(response_cuts[np.flatnonzero(fits)[-1]])


def keep_window(side: SideTokens, window: tuple[int, int]) -> tuple[list[int], list[int]]:
    """`(input_ids, labels)` of the tokens inside `window`; labels are the ids on response tokens, else -100."""
    prompt_end, response_end = window
    limit = np.where(side.is_response, response_end, prompt_end)
    kept = side.ends <= limit
    ids = side.ids[kept]
    labels = np.where(side.is_response[kept], ids, IGNORE_INDEX)
    return ids.tolist(), labels.tolist()


def _cut_positions(side):
    """A boolean per character position `0..n`: True where no token spans across it."""
    allowed = np.ones(side.text_length + 1, dtype=bool)
    for start, end in zip(side.starts.tolist(), side.ends.tolist()):
        allowed[start + 1 : end] = False
    return allowed


def _count_ending_by(token_ends, cuts):
    """For each cut position, how many of the tokens end at or before it."""
    return np.searchsorted(np.sort(token_ends), cuts, side="right")
