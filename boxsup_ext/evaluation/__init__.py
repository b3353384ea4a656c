"""Evaluation: confusion matrices and mIoU (``metrics``), the dataset evaluator, dense CRF,
multi-scale/flip averaging and trimaps."""

from boxsup_ext.evaluation.crf import CRFParams, dense_crf, dense_crf_many
from boxsup_ext.evaluation.multiscale import PAPER_SCALES, multiscale_logits, parse_scales
from boxsup_ext.evaluation.trimap import boundary_pixels, parse_widths, trimap_bands

__all__ = [
    "CRFParams",
    "dense_crf",
    "dense_crf_many",
    "PAPER_SCALES",
    "multiscale_logits",
    "parse_scales",
    "boundary_pixels",
    "parse_widths",
    "trimap_bands",
]
