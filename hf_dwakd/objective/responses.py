"""Response positions of one side, gathered by mask into a padded batch (only they enter a loss: docs/method.md)."""

from dataclasses import dataclass

import torch

from hf_dwakd.objective.outputs import IGNORE_INDEX, SideOutputs, gather_rows  # noqa: F401 (gather_rows: re-exported)


@dataclass
class Responses:
    """One model's response positions, packed to the front of each row in their original order.

    The packed tensors are (B, n, ...) with n the longest response; slots past an example's length hold zeros
    (labels hold -100). `batch_index`/`position_index` (N,) locate the N response tokens, example by example, in
    the unpacked (B, L, ...) tensors, in the same order as `packed[valid]`; they index the logits without copying
    them whole.
    """

    hidden: torch.Tensor
    input_embeds: torch.Tensor
    target_embeds: torch.Tensor
    labels: torch.Tensor
    valid: torch.Tensor  # (B, n) bool
    lengths: torch.Tensor  # (B,) long
    batch_index: torch.Tensor  # (N,)
    position_index: torch.Tensor  # (N,)

    @property
    def num_tokens(self) -> int:
        return self.batch_index.numel()

    @property
    def rank(self) -> torch.Tensor:
        """(N,) each response token's index among its example's response positions (its slot in the packing)."""
        return self.valid.nonzero(as_tuple=True)[1]

    def token_labels(self) -> torch.Tensor:
        """(N,) labels of the response tokens."""
        return self.labels[self.valid]


def gather_responses(side: SideOutputs) -> Responses:
    mask = side.response_mask
    lengths = mask.sum(dim=1)
    longest = int(lengths.max()) if mask.numel() else 0
    # A stable sort of "not a response" puts each row's response positions first, in order.
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :longest]
    valid = torch.arange(longest, device=mask.device) < lengths[:, None]

    def pack(tensor):
        index = order[:, :, None].expand(-1, -1, tensor.shape[-1])
        return torch.where(valid[:, :, None], tensor.gather(1, index), 0)

    batch_index, position_index = mask.nonzero(as_tuple=True)
    return Responses(
        hidden=pack(side.hidden),
        input_embeds=pack(side.input_embeds),
        target_embeds=pack(side.target_embeds),
        labels=side.labels.gather(1, order).masked_fill(~valid, IGNORE_INDEX),
        valid=valid,
        lengths=lengths,
        batch_index=batch_index,
        position_index=position_index,
    )
