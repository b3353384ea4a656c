"""Region proposals for BoxSup and the on-disk proposal store.

Methods (plug-ins, see ``registry``): ``selective_search``, ``mcg`` (import of MCG's released
``.mat`` files), ``grabcut`` and ``rectangles`` (the paper's fixed-mask baselines), ``sam``
(Segment Anything's masks for box prompts; the optional extra ``boxsup_ext[sam]``). Every method
returns candidates in the units + members form (``boxsup_ext.core.candidates``; docs/ops.md, Conventions).
"""

from __future__ import annotations

from boxsup_ext.proposals.registry import ProposalMethod, available_methods, get_method, register_method
from boxsup_ext.proposals import grabcut, mcg, rectangles, sam, selective_search  # noqa: F401  (registers the methods)
from boxsup_ext.proposals.store import ProposalEntry, ProposalStore, generate_proposals, open_store

__all__ = [
    "ProposalMethod",
    "ProposalEntry",
    "ProposalStore",
    "available_methods",
    "generate_proposals",
    "get_method",
    "open_store",
    "register_method",
]
