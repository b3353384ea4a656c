"""The ground floor of boxsup_ext: the vocabulary every other module speaks, written once.

* :mod:`~boxsup_ext.core.candidates`: the units + members candidate form (``Candidates``,
  ``num_words``, bit packing, ``masks_to_units``).
* :mod:`~boxsup_ext.core.boxes`: the box pixel rule (``box_pixel_ranges``, ``box_masks``).
* :mod:`~boxsup_ext.core.labels`: ``IGNORE_LABEL`` and the paint order (larger first).
* :mod:`~boxsup_ext.core.costs`: ``ProposalCosts``, what the fused op returns.

NumPy only (torch appears as a type hint): data, proposals, ops, relabel and the test oracle
(``boxsup_ext.reference``) all import from here, and nothing here imports from them.
"""

from boxsup_ext.core.boxes import box_masks, box_pixel_ranges
from boxsup_ext.core.candidates import (
    BITS_PER_WORD,
    Candidates,
    masks_to_units,
    num_words,
    number_in_raster_order,
    pack_rows,
    unit_count,
    unit_statistics,
    unpack_masks,
    unpack_rows,
)
from boxsup_ext.core.costs import ProposalCosts
from boxsup_ext.core.labels import IGNORE_LABEL, paint_instances, paint_order

__all__ = [
    "BITS_PER_WORD",
    "Candidates",
    "IGNORE_LABEL",
    "ProposalCosts",
    "box_masks",
    "box_pixel_ranges",
    "masks_to_units",
    "num_words",
    "number_in_raster_order",
    "pack_rows",
    "paint_instances",
    "paint_order",
    "unit_count",
    "unit_statistics",
    "unpack_masks",
    "unpack_rows",
]
