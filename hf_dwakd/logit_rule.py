"""Whether a model's logits are its output layer applied to its last hidden state: one rule for the trainer, the
teacher cache and `inspect`.

Only then may a loss apply the output layer to the rows it reads (and a cache store the last hidden states in
place of the logits). The config is read first: the fields below post-process the logits of the models that
have them (final soft-capping, a logit scale). A numeric check on one position per row guards against what no
field says (a wrapper scaling the logits).
"""

import torch

# Each field, and the value at which it leaves the logits alone (None: any value set post-processes them).
POSTPROCESSING_FIELDS = {
    "final_logit_softcapping": None,
    "logit_scale": 1,
    "logits_scaling": 1,
    "output_multiplier_scale": 1,
}


def logit_postprocessing(config) -> list[str]:
    """`field=value` for each field of `config` (or its text config) that post-processes the logits."""
    settings = []
    for candidate in {id(config): config, id(config.get_text_config()): config.get_text_config()}.values():
        for name, neutral in POSTPROCESSING_FIELDS.items():
            value = getattr(candidate, name, None)
            if value is not None and value != neutral and f"{name}={value}" not in settings:
                settings.append(f"{name}={value}")
    return settings


@torch.no_grad()
def reproduces_logits(recomputed: torch.Tensor, logits: torch.Tensor) -> bool:
    """Whether `recomputed` (the output layer on the last hidden state) equals the model's `logits`, up to the
    rounding of the dtypes involved."""
    if recomputed.shape != logits.shape:
        return False
    both_float32 = recomputed.dtype == torch.float32 and logits.dtype == torch.float32
    tolerance = 1e-4 if both_float32 else 2e-2
    recomputed, logits = recomputed.float(), logits.float()
    return bool((recomputed - logits).abs().max() <= tolerance * logits.abs().max().clamp(min=1))
