"""boxsup_ext: semantic segmentation from bounding boxes, the BoxSup way, with fused kernels.

The compiled ops live in :mod:`boxsup_ext.ops` (importing it loads ``boxsup_ext._C``); the
subpackages ``data``, ``proposals``, ``models`` and the trainer build on them.
"""

__version__ = "0.1.0"
