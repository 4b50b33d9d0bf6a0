"""Which optimizer steps sample their responses, and the seed each batch samples with.

Both are pure functions of (`seed`, optimizer step, batch position), so every process draws the same, the
micro-batches of one step share their step's draw, and a run resumed at step k draws what the uninterrupted run
drew from step k on: there is no generator state to save.
"""

import numpy as np

# Streams of the seed sequence, so the step draw and the sampling seeds are independent.
_STEP_DRAW, _SAMPLING_SEED = 0, 1


def is_on_policy_step(seed: int, step: int, lmbda: float) -> bool:
    """Whether optimizer step `step` is on-policy: a uniform draw below `lmbda` (never at 0, always at 1)."""
    return bool(np.random.default_rng([seed, _STEP_DRAW, step]).random() < lmbda)


def sampling_seed(seed: int, step: int, batch_position: int) -> int:
    """The seed the `batch_position`-th batch of optimizer step `step` samples with.

    Positions count the step's batches across processes in the order the data loader deals them (micro-batch
    `i` of process `r` out of `n` is batch `i * n + r`), so two processes draw what one process accumulating
    their batches draws.
    """
    return int(np.random.SeedSequence([seed, _SAMPLING_SEED, step, batch_position]).generate_state(1)[0])
