"""Vocabulary-wide terms computed a chunk of tokens at a time, so that a 262k-vocabulary model fits in memory."""

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint


def over_token_chunks(
    fn: Callable[..., dict[str, torch.Tensor]],
    per_token: tuple[torch.Tensor, ...],
    shared: tuple[torch.Tensor, ...],
    chunk_size: int | None,
) -> dict[str, torch.Tensor]:
    """`fn(*per_token_chunk, *shared)` over chunks of the tokens (dim 0 of `per_token`), outputs concatenated.

    `fn` returns a dict of per-token tensors. With a `chunk_size`, each chunk runs under activation checkpointing
    while gradients are on: its (tokens x vocabulary) intermediates, the output layer's logit rows included (read
    inside `fn` through `SideOutputs.logits_at`), are freed after the forward and recomputed one chunk at a time in
    the backward, so the backward holds at most one chunk's. Pass big tensors in `shared` (or let `fn` read them
    from its closure) and index them inside `fn`, so no copy of them is kept. The result equals the unchunked one.
    """
    # Recomputing a chunk costs its forward once more (the output layers' matmuls included). Finishing each
    # chunk's gradients inside the forward instead (as Liger-Kernel's fused linear losses do) would avoid that,
    # but the per-token terms are combined afterwards with weights normalised over whole sequences (the entropy
    # weights of docs/method.md, "Token weights"), which exist only once every chunk has run.
    num_tokens = per_token[0].shape[0]
    if chunk_size is None or num_tokens <= chunk_size:
        return fn(*per_token, *shared)
    chunks = []
    for start in range(0, num_tokens, chunk_size):
        inputs = tuple(tensor[start : start + chunk_size] for tensor in per_token) + tuple(shared)
        if torch.is_grad_enabled():
            chunks.append(checkpoint(fn, *inputs, use_reentrant=False))
        else:
            chunks.append(fn(*inputs))
    return {name: torch.cat([chunk[name] for chunk in chunks]) for name in chunks[0]}
