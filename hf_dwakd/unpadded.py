"""Unpadded forwards: a batch's rows run as one sequence of their real tokens, so no layer computes on padding.

The rows are concatenated without their padding, with position ids that restart at 0 for each row. Given position
ids and no attention mask, transformers' masks keep each row to itself (`masking_utils.find_packed_sequence_indices`),
so every real token sees what it sees in the padded batch. The outputs are put back in the padded (B, L, ...)
layout, so nothing after the forward changes. Rows must be right-padded (the collator's layout): their positions
then start at 0 in both forms.
"""

import torch

from .objective.outputs import no_logit_positions


def unpadded_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows' real tokens one after another, (1, N), and their position ids, (1, N), restarting for each row."""
    real = attention_mask.bool()
    lengths = real.sum(dim=1)
    row_starts = torch.cumsum(lengths, dim=0) - lengths
    positions = torch.arange(int(lengths.sum()), device=input_ids.device)
    positions = positions - torch.repeat_interleave(row_starts, lengths)
    return input_ids[real].unsqueeze(0), positions.unsqueeze(0)


def repadded(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(1, N, ...) values of an unpadded forward in the padded (B, L, ...) layout, zeros at padding."""
    rows, columns = attention_mask.bool().nonzero(as_tuple=True)
    padded = values.new_zeros(*attention_mask.shape, *values.shape[2:])
    return padded.index_put((rows, columns), values[0])


def rows_of_different_lengths(input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """A right-padded batch of at least two rows of different lengths, on which leakage between packed rows shows:
    the batch itself when it has such rows, else its longest row followed by that row cut to half its length."""
    lengths = attention_mask.sum(dim=1)
    if lengths.unique().numel() >= 2:
        return input_ids, attention_mask
    longest = int(lengths.argmax())
    full, half = int(lengths[longest]), max(1, int(lengths[longest]) // 2)
    ids = input_ids[longest].repeat(2, 1)
    mask = torch.zeros_like(ids, dtype=attention_mask.dtype)
    mask[0, :full], mask[1, :half] = 1, 1
    return ids, mask


def unpadded_forward_matches(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> bool:
    """Whether `model`'s unpadded forward gives its padded forward's last hidden states on this batch (in eval
    mode, so dropout does not differ), row by row: false for a model whose attention lets packed rows see each
    other. Pass a batch of rows of different lengths (`rows_of_different_lengths`)."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            no_logits = no_logit_positions(input_ids.device)
            common = dict(output_hidden_states=True, use_cache=False, logits_to_keep=no_logits)
            padded = model(input_ids=input_ids, attention_mask=attention_mask, **common).hidden_states[-1]
            ids, positions = unpadded_inputs(input_ids, attention_mask)
            unpadded = model(input_ids=ids, position_ids=positions, **common).hidden_states[-1]
    finally:
        model.train(training)
    real = attention_mask.bool()[:, :, None]
    expected = torch.where(real, padded.float(), 0)
    error = (repadded(unpadded, attention_mask).float() - expected).abs().amax(dim=(1, 2))
    scale = expected.abs().amax(dim=(1, 2)).clamp(min=1e-6)
    # The two forwards round differently (about 1e-6 of a row's largest value in float32, 1e-2 in 16-bit); a row
    # that sees another row differs by far more, and the worst row decides, so one leaking short row shows.
    tolerance = 1e-4 if padded.dtype == torch.float32 else 5e-2
    return bool((error <= tolerance * scale).all())
