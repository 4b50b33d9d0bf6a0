"""See the alignment: the cross-model attention, its band and the Soft-DTW expected alignment of one example."""

from .callback import AlignmentPlotCallback
from .numbers import AlignmentNumbers, alignment_numbers

__all__ = ["AlignmentNumbers", "AlignmentPlotCallback", "alignment_numbers"]
