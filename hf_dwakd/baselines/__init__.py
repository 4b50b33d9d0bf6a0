"""The baselines' KD terms (docs/method.md, Baselines), each
`loss(student, teacher, num_items_in_batch=None, **options)` returning `(kd, metrics)`; see `common` for the shared
contract."""

from hf_dwakd.baselines.dskd import dskd_loss
from hf_dwakd.baselines.mined import mined_loss
from hf_dwakd.baselines.mined_alignment import MinEDAligner
from hf_dwakd.baselines.multilevel_ot import multilevel_ot_loss
from hf_dwakd.baselines.uld import uld_loss

__all__ = ["MinEDAligner", "dskd_loss", "mined_loss", "multilevel_ot_loss", "uld_loss"]
