"""What the objective needs from one model, shifted so that position i predicts `labels[:, i]` (docs/method.md)."""

from collections.abc import Callable
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


def no_logit_positions(device) -> torch.Tensor:
    """A `logits_to_keep` that keeps no position, so a model's forward applies its output layer to nothing (an int
    cannot: 0 means every position)."""
    return torch.empty(0, dtype=torch.long, device=device)


@dataclass
class SideOutputs:
    """One model's view of a batch.

    `labels` are next-token ids with `-100` outside the response; every other (B, L, ...) tensor is aligned with
    them. `vocab_size` is `len(tokenizer)`: a padded output layer may have more columns, which entropies and
    `log V` ignore.

    The logits come from one of two sources, read only through `logits_at`:
    - `output_layer`: the model's own output module, hidden rows (n, d) -> logits (n, V_model). Losses apply it
      to the rows they read, so no (B, L, V) tensor exists (LoRA on the output layer and ZeRO-3's module hooks
      work since the module itself is called);
    - `logits`: the full (B, L, V_model) logits, for callers that already have them (tests, a full forward).
    """

    hidden: torch.Tensor  # (B, L, d) last hidden state, after the final norm: the output layer's input
    input_embeds: torch.Tensor  # (B, L, d) E[input_id]
    target_embeds: torch.Tensor  # (B, L, d) E[label]; arbitrary where the label is -100
    labels: torch.Tensor  # (B, L)
    lm_head_weight: torch.Tensor  # (V_model, d), whole; the projections z_t2s, z_s2t multiply by it, detached
    vocab_size: int
    logits: torch.Tensor | None = None  # (B, L, V_model)
    output_layer: Callable[[torch.Tensor], torch.Tensor] | None = None  # (n, d) -> (n, V_model)

    @property
    def response_mask(self) -> torch.Tensor:
        return self.labels != IGNORE_INDEX

    @property
    def logit_width(self) -> int:
        """V_model, the number of logit columns (>= `vocab_size`)."""
        return self.lm_head_weight.shape[0]

    def logits_at(self, batch_index: torch.Tensor, position_index: torch.Tensor) -> torch.Tensor:
        """(n, V_model) logits at the positions `(batch_index[k], position_index[k])`, in that order; the positions
        must be distinct where gradients flow (see `gather_rows`).

        The one place every loss reads logits from: with an `output_layer`, only these rows are computed.
        """
        if self.logits is not None:
            return gather_rows(self.logits, batch_index, position_index)
        return self.output_layer(gather_rows(self.hidden, batch_index, position_index))


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, batch_index, position_index):
        ctx.save_for_backward(batch_index, position_index)
        ctx.shape = values.shape
        return values[batch_index, position_index]

    @staticmethod
    def backward(ctx, grad):
        batch_index, position_index = ctx.saved_tensors
        grad_values = grad.new_zeros(ctx.shape)
        grad_values[batch_index, position_index] = grad  # the positions are distinct: written, not accumulated
        return grad_values, None, None


def gather_rows(values: torch.Tensor, batch_index: torch.Tensor, position_index: torch.Tensor) -> torch.Tensor:
    """`values[batch_index, position_index]` for distinct positions (a `Responses`' indices, or a chunk of them).

    Its backward writes the gradient rows into zeros, where plain indexing accumulates them: the same values,
    2-3x faster on CPU for a (tokens x vocabulary) gradient.
    """
    return _GatherRows.apply(values, batch_index, position_index)


def shift_for_next_token(
    logits: torch.Tensor | None,
    hidden: torch.Tensor,
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    lm_head_weight: torch.Tensor,
    vocab_size: int,
    output_layer: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> SideOutputs:
    """Build a `SideOutputs` from a causal LM's outputs with HF-style (unshifted) `labels`.

    `hidden` is the last hidden state (the output layer's input, `outputs.hidden_states[-1]` of a transformers
    causal LM) on the whole sequence, (B, L, d); `embeddings` is the input-embedding layer's output on it. Pass
    either the full `logits` (B, L, V_model) or the model's `output_layer` (then `logits` may be None). A
    response label is the next input id, so `E[label]` at position i is the embedding at position i + 1;
    elsewhere it is masked out anyway.
    """
    if logits is None and output_layer is None:
        raise ValueError("shift_for_next_token needs the full `logits` or the model's `output_layer`; got neither.")
    return SideOutputs(
        hidden=hidden[:, :-1],
        input_embeds=embeddings[:, :-1],
        target_embeds=embeddings[:, 1:],
        labels=labels[:, 1:],
        lm_head_weight=lm_head_weight,
        vocab_size=vocab_size,
        logits=None if logits is None else logits[:, :-1],
        output_layer=output_layer,
    )
