"""hf-dwakd: cross-tokenizer knowledge distillation (DWA-KD) as a TRL trainer."""

import importlib

from hf_dwakd import baselines, objective  # noqa: F401  (their loss modules register the built-in methods)

__version__ = "0.1.0"

# Imported on first use, so `hf_dwakd.ops` works without loading TRL.
_LAZY = {
    "DWAKDConfig": "hf_dwakd.config",
    "DWAKDTrainer": "hf_dwakd.trainer",
    "build_teacher_cache": "hf_dwakd.teacher_cache",
}
__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hf_dwakd' has no attribute {name!r}")
