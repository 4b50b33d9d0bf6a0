"""What the objective needs from one model, shifted so that position i predicts `labels[:, i]` (docs/method.md)."""

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass
class SideOutputs:
    """One model's view of a batch.

    `labels` are next-token ids with `-100` outside the response; every other tensor is aligned with them.
    `vocab_size` is `len(tokenizer)`: a padded LM head may have more columns, which entropies and `log V` ignore.
    """

    logits: torch.Tensor  # (B, L, V_model)
    hidden: torch.Tensor  # (B, L, d) last hidden state
    input_embeds: torch.Tensor  # (B, L, d) E[input_id]
    target_embeds: torch.Tensor  # (B, L, d) E[label]; arbitrary where the label is -100
    labels: torch.Tensor  # (B, L)
    lm_head_weight: torch.Tensor  # (V_model, d)
    vocab_size: int

    @property
    def response_mask(self) -> torch.Tensor:
        return self.labels != IGNORE_INDEX


def shift_for_next_token(
    logits: torch.Tensor,
    hidden: torch.Tensor,
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    lm_head_weight: torch.Tensor,
    vocab_size: int,
) -> SideOutputs:
    """Build a `SideOutputs` from a causal LM's outputs with HF-style (unshifted) `labels`.

    `embeddings` is the input-embedding layer's output on the whole sequence. A response label is the next input id,
    so `E[label]` at position i is the embedding at position i + 1; elsewhere it is masked out anyway.
    """
    return SideOutputs(
        logits=logits[:, :-1],
        hidden=hidden[:, :-1],
        input_embeds=embeddings[:, :-1],
        target_embeds=embeddings[:, 1:],
        labels=labels[:, 1:],
        lm_head_weight=lm_head_weight,
        vocab_size=vocab_size,
    )
