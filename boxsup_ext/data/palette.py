"""The PASCAL VOC colour palette and palette-mode PNG label maps.

Label maps are ``np.uint8 [H, W]`` class indices (0 = background, 255 = ignore:
``boxsup_ext.core.IGNORE_LABEL``). They are stored as palette ('P') PNGs with the VOC palette, so
any image viewer shows them in the usual colours while the pixel values stay the class indices.
"""

from __future__ import annotations

import io
import os
from typing import Union

import numpy as np
from PIL import Image

from boxsup_ext.utils import InputError, atomic_write_bytes

PathLike = Union[str, os.PathLike]


def voc_palette() -> list[int]:
    """The 256-entry VOC palette as a flat list of 768 ints (R, G, B per index, 0..255).

    Index i gets the colour built from the bits of i (the devkit's ``labelcolormap``); index 255
    (ignore) is (224, 224, 192) as in the VOC PNGs.
    """
    return list(_VOC_PALETTE)


def _build_voc_palette() -> list[int]:
    palette = []
    for index in range(256):
        red = green = blue = 0
        value = index
        for shift in range(7, -1, -1):
            red |= ((value >> 0) & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        palette.extend((red, green, blue))
    return palette


_VOC_PALETTE = tuple(_build_voc_palette())


def encode_label_png(label: np.ndarray, palette: bool = True) -> bytes:
    """PNG bytes of a uint8 [H, W] label map in palette mode with the VOC palette, or with
    ``palette=False`` as a single-channel grayscale ('L') PNG of the same class indices (what
    mmsegmentation's annotation loader expects); :func:`load_label_png` reads both."""
    label = np.asarray(label)
    if label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError(f"label must be a uint8 [H, W] array, got {label.dtype} {label.shape}")
    height, width = label.shape
    image = Image.frombytes("P" if palette else "L", (width, height), np.ascontiguousarray(label).tobytes())
    if palette:
        image.putpalette(_VOC_PALETTE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def save_label_png(path: PathLike, label: np.ndarray) -> None:
    """Write a uint8 [H, W] label map to ``path`` as a VOC-palette PNG (temp name + rename)."""
    atomic_write_bytes(path, encode_label_png(label))


def load_label_png(path: PathLike) -> np.ndarray:
    """Read a label PNG as np.uint8 [H, W] of class indices.

    Palette PNGs give their indices, grayscale PNGs (``SegmentationClassAug``) their values. An RGB
    PNG is refused: its colours would have to be mapped back to indices first.
    """
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise InputError(
                    f"{path}: label PNG has mode {image.mode!r}; expected a palette ('P') or grayscale "
                    "('L') PNG of class indices"
                )
            array = np.asarray(image, dtype=np.uint8)
    except FileNotFoundError:
        raise InputError(f"{path}: label PNG not found; check the dataset root and split list") from None
    except (OSError, SyntaxError) as err:
        raise InputError(f"{path}: cannot read label PNG ({err}); re-create or remove the file") from None
    return np.array(array, dtype=np.uint8, copy=True)
