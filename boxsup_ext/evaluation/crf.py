"""Fully connected CRF post-processing (Krähenbühl & Koltun 2011) via pydensecrf, DeepLab style.

The network's softmax probabilities give the unary term ``-log p``; two Potts pairwise kernels
smooth it: a Gaussian on pixel position (``pos_*``) and a bilateral kernel on position and RGB
colour (``bi_*``). Defaults are DeepLab-LargeFOV's (Chen et al. 2015), the setting BoxSup used:
``bi_w=4, bi_xy_std=121, bi_rgb_std=5, pos_w=3, pos_xy_std=3``, 10 mean-field iterations.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ProcessPoolExecutor
from typing import Iterable, Sequence

import numpy as np

from boxsup_ext.utils import InputError

# Probabilities are clipped away from zero before the log so a confident network does not give
# infinite unaries (which would freeze those pixels and make the CRF a no-op there).
_MIN_PROB = 1e-8


@dataclasses.dataclass(frozen=True)
class CRFParams:
    """Dense CRF settings. Standard deviations are in pixels (``*_xy_std``) and in 0..255 RGB
    intensity units (``bi_rgb_std``); weights are the Potts compatibilities of each kernel."""

    iterations: int = 10
    pos_w: float = 3.0
    pos_xy_std: float = 3.0
    bi_w: float = 4.0
    bi_xy_std: float = 121.0
    bi_rgb_std: float = 5.0

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise InputError(f"CRF iterations must be >= 1, got {self.iterations}")
        for name in ("pos_xy_std", "bi_xy_std", "bi_rgb_std"):
            if getattr(self, name) <= 0:
                raise InputError(f"CRF {name} must be > 0, got {getattr(self, name)}")
        for name in ("pos_w", "bi_w"):
            if getattr(self, name) < 0:
                raise InputError(f"CRF {name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def from_string(cls, text: str) -> "CRFParams":
        """Parse ``"bi_w=5,bi_rgb_std=3"`` (any subset of the fields) over the defaults."""
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        values: dict[str, float | int] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, raw = item.partition("=")
            key = key.strip()
            if not sep or key not in fields:
                raise InputError(
                    f"--crf-params item {item!r} is not NAME=VALUE with NAME in {', '.join(fields)}"
                )
            try:
                values[key] = int(raw) if key == "iterations" else float(raw)
            except ValueError:
                raise InputError(f"--crf-params {key} needs a number, got {raw!r}") from None
        return cls(**values)


def _import_densecrf():
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise InputError(
            "dense CRF needs the pydensecrf module: run `pip install pydensecrf2`"
        ) from err
    return dcrf, unary_from_softmax


def dense_crf(image: np.ndarray, probs: np.ndarray, params: CRFParams = CRFParams()) -> np.ndarray:
    """Refine class probabilities with a fully connected CRF.

    Args:
        image: uint8 [H, W, 3] RGB image.
        probs: float [C, H, W] per-pixel class probabilities (each pixel sums to 1; C >= 2).
        params: kernel settings, see :class:`CRFParams`.

    Returns:
        float32 [C, H, W] approximate CRF marginals after ``params.iterations`` mean-field steps.
    """
    image = np.asarray(image)
    probs = np.asarray(probs)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"CRF image must be uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2]:
        raise InputError(
            f"CRF probs must be [C, H, W] matching the image {list(image.shape[:2])}, got {list(probs.shape)}"
        )
    if probs.shape[0] < 2:
        raise InputError(f"CRF needs at least 2 classes, got {probs.shape[0]}")
    dcrf, unary_from_softmax = _import_densecrf()
    num_classes, height, width = probs.shape
    crf = dcrf.DenseCRF2D(width, height, num_classes)
    unary = unary_from_softmax(np.clip(probs.astype(np.float32), _MIN_PROB, 1.0))
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=params.pos_xy_std, compat=params.pos_w)
    # pydensecrf takes a writable C-contiguous buffer; decoded images are often read-only views.
    rgb = np.array(image, dtype=np.uint8, order="C", copy=True)
    crf.addPairwiseBilateral(sxy=params.bi_xy_std, srgb=params.bi_rgb_std, rgbim=rgb, compat=params.bi_w)
    marginals = np.asarray(crf.inference(params.iterations), dtype=np.float32)
    return marginals.reshape(num_classes, height, width)


def _dense_crf_job(job: tuple[np.ndarray, np.ndarray, CRFParams]) -> np.ndarray:
    return dense_crf(*job)


def dense_crf_many(
    images: Sequence[np.ndarray],
    probs: Sequence[np.ndarray],
    params: CRFParams = CRFParams(),
    workers: int = 1,
) -> list[np.ndarray]:
    """:func:`dense_crf` over several images, in ``workers`` processes (1 = in this process).

    Args:
        images: uint8 [H_i, W_i, 3] RGB images.
        probs: float [C, H_i, W_i] probabilities, one per image.

    Returns:
        float32 [C, H_i, W_i] marginals, in input order.
    """
    if len(images) != len(probs):
        raise InputError(f"dense_crf_many got {len(images)} images but {len(probs)} probability maps")
    jobs: Iterable[tuple[np.ndarray, np.ndarray, CRFParams]] = zip(images, probs, [params] * len(images))
    if workers <= 1 or len(images) <= 1:
        return [_dense_crf_job(job) for job in jobs]
    with ProcessPoolExecutor(max_workers=min(workers, len(images))) as pool:
        return list(pool.map(_dense_crf_job, jobs))
