"""The baselines of docs/method.md (Baselines), each registering its method (`hf_dwakd.registry`) beside its loss.

The KD terms keep a tensor-level signature, `loss(student, teacher, num_items_in_batch=None, **options)` returning
`(kd, metrics)`; `common.baseline_method` adds the student CE and reads the options from the config.
"""

import importlib

from hf_dwakd.baselines import sft  # noqa: F401  (registers the sft method)
from hf_dwakd.baselines.dskd import dskd_loss
from hf_dwakd.baselines.mined import mined_loss
from hf_dwakd.baselines.multilevel_ot import multilevel_ot_loss
from hf_dwakd.baselines.uld import uld_loss

__all__ = ["MinEDAligner", "dskd_loss", "mined_loss", "multilevel_ot_loss", "uld_loss"]


def __getattr__(name):
    # MinED's aligner compiles with Numba: imported when a mined run builds it, not with the package.
    if name == "MinEDAligner":
        return importlib.import_module("hf_dwakd.baselines.mined_alignment").MinEDAligner
    raise AttributeError(f"module 'hf_dwakd.baselines' has no attribute {name!r}")
