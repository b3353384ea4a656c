"""A small built-in dataset in the VOC layout where boxes are clearly worse labels than masks.

Three presets (``--preset``, :data:`PRESETS`) share the drawing code and differ by a style table:

``easy`` (the default; 128 x 128, 1..4 objects, ``min_visible`` 0.45): five classes told apart by
appearance only (colour pair and texture). Each object's shape is drawn from {ellipse, triangle,
star, ring, blob} independently of its class, at a random size and rotation, on a smooth noisy
background with faint line clutter.

``hard`` (192 x 256, 1..5 objects, ``min_visible`` 0.3): eight classes that differ by shape as well
as appearance. Each class draws its instances from one shape family (round, pointy, hollow, thin,
curved) at a random size, rotation and aspect; every class has its own look (colour pair or
texture), six of the eight share their colour pair with a class of another family, and classes
sharing a family differ by texture or colour. Thin objects (bars, L and U shapes, snakes, crescents)
and concave ones (stars, rings, C shapes, crescents), whose filled box covers much more than the
object, are common. Each image also holds 0..3 unlabelled distractors, drawn like objects in styles
that are no class (a class's colour pair with the ``grid`` texture no class has, on the ``angular``
family no class uses, or a colour scheme no class uses on any family): they are background (0) in
both label maps, have no box, and occlude or are occluded by the objects. The background is
cluttered: a multi-scale smooth colour field under texture patches and line segments in the
preset's own colours, so colour alone does not find the objects.

``pretrain`` (as ``hard``): eight other classes, in colour schemes that no easy or hard class uses,
with the same families, backgrounds and distractor rules as ``hard`` (here pairs of classes share
colour pair and texture and differ by family alone): synthetic data to pretrain a
backbone on that never shows the classes BoxSup is later trained on.

In every preset objects overlap and occlude each other (each keeps at least ``min_visible`` of its
own area visible), and a box is that of its object's visible pixels.

Written layout (see :mod:`boxsup_ext.data.voc`): JPEGImages/*.jpg, Annotations/*.xml (boxes of the
visible pixels), SegmentationClass/*.png (palette), SegmentationObject/*.png (instance ids 1..M in
box order), ImageSets/{Segmentation,Main}/{train,val,trainval}.txt, classes.txt (the preset's class
names, background first) and synthetic.json (the arguments; the preset is recorded for every preset
but ``easy``, whose record predates presets: :func:`recorded_preset`). The output is a pure function
of the arguments: image i of a split is drawn from its own seeded generator.

CLI: ``python -m boxsup_ext.data.synthetic --out DIR --num-train N --num-val M --seed S
[--preset easy|hard|pretrain]``.
"""

from __future__ import annotations

import argparse
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from boxsup_ext.data.palette import encode_label_png
from boxsup_ext.utils import InputError, atomic_write_bytes, atomic_write_json, atomic_write_lines, run_cli


# Shape families; a hard or pretrain class draws its shapes from one. No class uses DISTRACTOR_FAMILY.
SHAPE_FAMILIES = {
    "round": ("ellipse", "blob"),
    "pointy": ("star", "triangle"),
    "hollow": ("ring", "cshape"),
    "thin": ("bar", "lshape", "ushape"),
    "curved": ("crescent", "snake"),
    "angular": ("square", "cross"),
}
SHAPE_FAMILY = {shape: family for family, shapes in SHAPE_FAMILIES.items() for shape in shapes}
DISTRACTOR_FAMILY = "angular"
CLASS_FAMILY_SHAPES = tuple(s for family, shapes in SHAPE_FAMILIES.items() if family != DISTRACTOR_FAMILY for s in shapes)
SHAPES = ("ellipse", "triangle", "star", "ring", "blob")  # the easy preset's shapes, for any class
TEXTURES = ("stripes", "dots", "checker", "speckle", "waves", "grid", "rings", "plain")
# Colour pairs (first, second colour), blended per pixel by a texture.
COLOUR_SCHEMES = {
    "red": ((200, 40, 40), (250, 160, 60)),
    "green": ((40, 150, 60), (190, 230, 120)),
    "blue": ((40, 70, 200), (150, 200, 250)),
    "yellow": ((220, 200, 40), (120, 100, 20)),
    "purple": ((130, 50, 160), (230, 140, 220)),
    "teal": ((20, 140, 140), (140, 230, 220)),
    "magenta": ((200, 40, 150), (250, 170, 210)),
    "tan": ((120, 80, 40), (220, 190, 140)),
    "grey": ((80, 80, 80), (205, 205, 205)),
    "orange": ((240, 130, 20), (60, 40, 30)),
}
# (colour scheme, texture, shape family) of each class; its name is "scheme_texture_family".
HARD_CLASSES = (
    ("red", "stripes", "round"),
    ("red", "checker", "thin"),
    ("green", "dots", "pointy"),
    ("green", "stripes", "hollow"),
    ("blue", "waves", "curved"),
    ("blue", "dots", "thin"),
    ("yellow", "speckle", "hollow"),
    ("purple", "checker", "pointy"),
)
PRETRAIN_CLASSES = (
    ("teal", "rings", "hollow"),
    ("teal", "rings", "pointy"),
    ("magenta", "checker", "thin"),
    ("magenta", "checker", "curved"),
    ("magenta", "stripes", "thin"),
    ("tan", "speckle", "round"),
    ("tan", "speckle", "curved"),
    ("tan", "waves", "pointy"),
)
DISTRACTOR_SCHEMES = (("grey", "grid"), ("orange", "plain"))
DISTRACTOR_TEXTURE = "grid"  # no class of a photographic preset has it
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ClassStyle:
    """How a class (or a kind of distractor) looks: ``colour_a`` and ``colour_b`` blended by
    ``texture`` on a shape drawn from ``shapes``."""

    name: str
    colour_a: tuple[int, int, int]
    colour_b: tuple[int, int, int]
    texture: str
    shapes: tuple[str, ...]

    @property
    def families(self) -> frozenset[str]:
        return frozenset(SHAPE_FAMILY[shape] for shape in self.shapes)


def _style(scheme: str, texture: str, shapes: tuple[str, ...], name: str) -> ClassStyle:
    return ClassStyle(name, *COLOUR_SCHEMES[scheme], texture, shapes)


@dataclass(frozen=True)
class Preset:
    """A synthetic dataset preset: its class styles, default image size and object counts, and
    what it adds to the easy drawing (distractors, aspect, cluttered background)."""

    name: str
    styles: tuple[ClassStyle, ...]
    height: int
    width: int
    max_objects: int
    min_visible: float
    distractor_styles: tuple[ClassStyle, ...] = ()
    max_distractors: int = 0
    radius_range: tuple[float, float] = (0.12, 0.34)  # object size, in image short sides
    aspect_range: Optional[tuple[float, float]] = None  # squash along one axis (None: none drawn)
    cluttered: bool = False  # cluttered textured background instead of the easy one

    @property
    def class_names(self) -> tuple[str, ...]:
        return ("background",) + tuple(style.name for style in self.styles)

    @property
    def palette(self) -> np.ndarray:
        """float32 [K, 3]: the distinct colours of the preset's classes and distractors."""
        styles = self.styles + self.distractor_styles
        colours = dict.fromkeys(colour for style in styles for colour in (style.colour_a, style.colour_b))
        return np.asarray(list(colours), np.float32)


def _photographic(name: str, classes: tuple[tuple[str, str, str], ...]) -> Preset:
    """A preset with ``classes`` (scheme, texture, family) in the hard preset's setting: distractors,
    random aspect, cluttered background, 192 x 256 images with 1..5 objects."""
    styles = tuple(_style(s, t, SHAPE_FAMILIES[f], f"{s}_{t}_{f}") for s, t, f in classes)
    # Distractors in the classes' colours with a texture no class has (grid) on the angular family no
    # class has, and the schemes of DISTRACTOR_SCHEMES on any class shape: object-like, colour-alike.
    recoloured = dict.fromkeys(s for s, _t, _f in classes)
    distractors = tuple(
        _style(s, DISTRACTOR_TEXTURE, SHAPE_FAMILIES[DISTRACTOR_FAMILY], f"{s}_{DISTRACTOR_TEXTURE}_{DISTRACTOR_FAMILY}") for s in recoloured
    ) + tuple(_style(s, t, CLASS_FAMILY_SHAPES, f"{s}_{t}") for s, t in DISTRACTOR_SCHEMES)
    return Preset(
        name, styles, height=192, width=256, max_objects=5, min_visible=0.3, distractor_styles=distractors,
        max_distractors=3, radius_range=(0.14, 0.36), aspect_range=(0.55, 1.0), cluttered=True,
    )  # fmt: skip


EASY_CLASSES = (("red", "stripes"), ("green", "dots"), ("blue", "checker"), ("yellow", "speckle"), ("purple", "waves"))
PRESETS = {
    "easy": Preset("easy", tuple(_style(s, t, SHAPES, f"{s}_{t}") for s, t in EASY_CLASSES), 128, 128, 4, 0.45),
    "hard": _photographic("hard", HARD_CLASSES),
    "pretrain": _photographic("pretrain", PRETRAIN_CLASSES),
}
CLASS_NAMES = PRESETS["easy"].class_names


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name is an InputError."""
    if name not in PRESETS:
        raise InputError(f"--preset must be one of {', '.join(PRESETS)}, got {name!r}")
    return PRESETS[name]


def class_names(preset: str = "easy") -> tuple[str, ...]:
    """The class names of ``preset``, background first (as written to classes.txt)."""
    return get_preset(preset).class_names


def recorded_preset(record: dict) -> str:
    """The preset of a dataset from its synthetic.json ``record`` (easy records name none)."""
    return record.get("preset", "easy")


@dataclass
class SyntheticImage:
    """One drawn image.

    Attributes:
        image: uint8 [H, W, 3] RGB (before JPEG compression).
        class_map: uint8 [H, W] class index per pixel (0 = background, distractors included).
        object_map: uint8 [H, W] instance id per pixel (0 = none, k + 1 = object k).
        boxes: float32 [M, 4] tight (x0, y0, x1, y1) half-open boxes of the visible pixels.
        labels: int64 [M] classes in [1, len(class_names)).
        shapes: the M shape names.
        distractor_mask: bool [H, W] visible pixels of the unlabelled distractors.
    """

    image: np.ndarray
    class_map: np.ndarray
    object_map: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    shapes: list[str]
    distractor_mask: np.ndarray


def _rectangle(u: np.ndarray, v: np.ndarray, u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
    return (u >= u0) & (u <= u1) & (v >= v0) & (v <= v1)


def _shape_mask(
    shape: str, rng: np.random.Generator, dy: np.ndarray, dx: np.ndarray, radius: float, aspect: float = 1.0
) -> np.ndarray:
    """bool mask of ``shape`` centred at the origin of the pixel offsets (dy, dx), size ~``radius``
    px, squashed to ``aspect`` across its own axis. Every shape lies within 1.45 radii."""
    angle = rng.uniform(0, 2 * np.pi)
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / radius
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / radius
    if aspect != 1.0:
        v = v / aspect
    rho = np.hypot(u, v)
    phi = np.arctan2(v, u)
    if shape == "ellipse":
        return u**2 + (v / rng.uniform(0.45, 0.85)) ** 2 <= 1.0
    if shape == "triangle":
        # Three half-planes at 120 degrees: a triangle of circumradius 1 (inradius 0.5).
        normals = np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3])
        return np.all(u[None] * np.cos(normals)[:, None, None] + v[None] * np.sin(normals)[:, None, None] <= 0.5, 0)
    if shape == "star":
        points = rng.integers(5, 7)
        inner = rng.uniform(0.35, 0.5)
        return rho <= inner + (1 - inner) * (0.5 + 0.5 * np.cos(points * phi)) ** 3
    if shape == "ring":
        return (rho <= 1.0) & (rho >= rng.uniform(0.45, 0.65))
    if shape == "blob":
        edge = np.ones_like(rho)
        for harmonic in (2, 3, 4):
            edge += rng.uniform(-0.22, 0.22) * np.cos(harmonic * phi + rng.uniform(0, 2 * np.pi))
        return rho <= 0.85 * edge
    if shape == "cshape":
        return (rho <= 1.0) & (rho >= rng.uniform(0.5, 0.7)) & (np.abs(phi) >= rng.uniform(0.45, 0.9))
    if shape == "crescent":
        shift, bite = rng.uniform(0.35, 0.6), rng.uniform(0.8, 1.0)
        return (rho <= 1.0) & ((u - shift) ** 2 + v**2 > bite**2)
    if shape == "bar":
        half = rng.uniform(0.1, 0.2)
        return _rectangle(u, v, -1.3, 1.3, -half, half)
    if shape in ("lshape", "ushape"):
        stroke = rng.uniform(0.22, 0.4)
        mask = _rectangle(u, v, -0.9, -0.9 + stroke, -0.9, 0.9) | _rectangle(u, v, -0.9, 0.9, 0.9 - stroke, 0.9)
        if shape == "ushape":
            mask |= _rectangle(u, v, 0.9 - stroke, 0.9, -0.9, 0.9)
        return mask
    if shape == "snake":
        amplitude, half, waves = rng.uniform(0.25, 0.45), rng.uniform(0.12, 0.2), rng.uniform(0.7, 1.3)
        return (np.abs(u) <= 1.2) & (np.abs(v - amplitude * np.sin(np.pi * waves * u)) <= half)
    if shape == "square":
        side = rng.uniform(0.6, 0.85)
        return _rectangle(u, v, -side, side, -side, side)
    if shape == "cross":
        half = rng.uniform(0.18, 0.3)
        return _rectangle(u, v, -1.0, 1.0, -half, half) | _rectangle(u, v, -half, half, -1.0, 1.0)
    raise ValueError(f"unknown shape {shape!r}")


def _texture(kind: str, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """float32 [H, W] in [0, 1]: the weight of a style's first colour at each pixel."""
    angle = rng.uniform(0, np.pi)
    along = xx * np.cos(angle) + yy * np.sin(angle)
    across = -xx * np.sin(angle) + yy * np.cos(angle)
    if kind == "stripes":
        return (np.sin(2 * np.pi * along / rng.uniform(5, 8) + rng.uniform(0, 6.3)) > 0).astype(np.float32)
    if kind == "dots":
        period = rng.uniform(5, 8)
        dist = np.hypot((along % period) - period / 2, (across % period) - period / 2)
        return (dist > period * 0.3).astype(np.float32)
    if kind == "checker":
        cell = rng.uniform(4, 7)
        return ((np.floor(along / cell) + np.floor(across / cell)) % 2).astype(np.float32)
    if kind == "speckle":
        return (rng.random(yy.shape) > 0.35).astype(np.float32)
    if kind == "waves":
        return (0.5 + 0.5 * np.sin(2 * np.pi * (along + 3 * np.sin(across / 4)) / rng.uniform(9, 14))).astype(np.float32)
    if kind == "grid":
        period = rng.uniform(5, 8)
        return (((along % period) < 1.6) | ((across % period) < 1.6)).astype(np.float32)
    if kind == "rings":
        centre_y, centre_x = (yy.min() + yy.max()) / 2, (xx.min() + xx.max()) / 2
        return (np.sin(2 * np.pi * np.hypot(yy - centre_y, xx - centre_x) / rng.uniform(4, 7)) > 0).astype(np.float32)
    if kind == "plain":
        return ((along - along.min()) / (np.ptp(along) + 1.0)).astype(np.float32)
    raise ValueError(f"unknown texture {kind!r}")


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """float32 [H, W, 3]: smooth random colour field with faint line clutter, in 0..255."""
    coarse = rng.uniform(60, 190, size=(4, 4, 3)).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.float32)
    yy, xx = np.ogrid[0:height, 0:width]
    angle, period = rng.uniform(0, np.pi), rng.uniform(10, 25)
    # Faint grey line clutter so that edges alone do not find the objects.
    clutter = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period) > 0.9
    field[clutter] *= 0.8
    return field


def _cluttered_background(rng: np.random.Generator, height: int, width: int, palette: np.ndarray) -> np.ndarray:
    """float32 [H, W, 3] in 0..255: a multi-scale smooth colour field under textured patches and
    line segments whose colours are drawn from ``palette`` [K, 3]."""
    field = np.zeros((height, width, 3), np.float32)
    for cells, weight in ((3, 0.55), (9, 0.3), (27, 0.15)):
        coarse = rng.uniform(40, 215, size=(cells, max(2, round(cells * width / height)), 3)).astype(np.uint8)
        field += weight * np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.float32)
    for _ in range(int(rng.integers(2, 6))):
        patch_h, patch_w = int(rng.uniform(0.15, 0.45) * height) + 2, int(rng.uniform(0.15, 0.45) * width) + 2
        y0, x0 = int(rng.integers(0, max(height - patch_h, 0) + 1)), int(rng.integers(0, max(width - patch_w, 0) + 1))
        window = (slice(y0, y0 + patch_h), slice(x0, x0 + patch_w))
        yy, xx = np.mgrid[window].astype(np.float32)
        colour_a, colour_b = palette[rng.integers(len(palette), size=2)]
        weight = _texture(TEXTURES[int(rng.integers(len(TEXTURES)))], rng, yy, xx)[..., None]
        alpha = np.full(yy.shape + (1,), rng.uniform(0.45, 0.9), np.float32)
        if rng.random() < 0.5:  # a soft-edged ellipse instead of a rectangle
            ry, rx = (yy - yy.mean()) / (patch_h / 2), (xx - xx.mean()) / (patch_w / 2)
            alpha *= np.clip(3.0 * (1.0 - ry**2 - rx**2), 0.0, 1.0)[..., None]
        colours = weight * colour_a + (1 - weight) * colour_b
        field[window] = (1 - alpha) * field[window] + alpha * colours
    for _ in range(int(rng.integers(3, 10))):
        (ya, yb), (xa, xb) = rng.uniform(0, height, 2), rng.uniform(0, width, 2)
        half = rng.uniform(0.5, 1.8)
        window = (
            slice(max(int(min(ya, yb) - half), 0), min(int(max(ya, yb) + half) + 2, height)),
            slice(max(int(min(xa, xb) - half), 0), min(int(max(xa, xb) + half) + 2, width)),
        )
        yy, xx = np.mgrid[window].astype(np.float32)
        along = np.clip(((yy - ya) * (yb - ya) + (xx - xa) * (xb - xa)) / max((yb - ya) ** 2 + (xb - xa) ** 2, 1e-6), 0, 1)
        on_line = np.hypot(yy - ya - along * (yb - ya), xx - xa - along * (xb - xa)) <= half
        field[window][on_line] = palette[rng.integers(len(palette))] * rng.uniform(0.7, 1.1)
    return field


def _item_kinds(rng: np.random.Generator, spec: Preset, max_objects: int) -> list[bool]:
    """In drawing order, whether each item to draw is a labelled object (True) or a distractor:
    1..``max_objects`` objects and 0..``spec.max_distractors`` distractors, shuffled."""
    is_object = [True] * int(rng.integers(1, max_objects + 1))
    if spec.max_distractors:
        is_object += [False] * int(rng.integers(0, spec.max_distractors + 1))
        is_object = [is_object[i] for i in rng.permutation(len(is_object))]
    return is_object


def _item_look(rng: np.random.Generator, spec: Preset, labelled: bool) -> tuple[int, ClassStyle, str]:
    """A random class (or, for a distractor, label 0 and a distractor style) and a shape of its style."""
    if labelled:
        label = int(rng.integers(1, len(spec.styles) + 1))
        style = spec.styles[label - 1]
    else:
        label, style = 0, spec.distractor_styles[int(rng.integers(len(spec.distractor_styles)))]
    shape = style.shapes[int(rng.integers(len(style.shapes)))]
    return label, style, shape


def _place_item(
    rng: np.random.Generator, spec: Preset, shape: str, owner: np.ndarray, full_areas: list[int], min_visible: float
) -> Optional[tuple[np.ndarray, tuple[slice, slice], np.ndarray, np.ndarray]]:
    """Draw ``shape`` at a random centre, size and aspect, up to 12 tries, until it covers 40
    pixels or more and leaves each item drawn so far (``owner`` as in :func:`draw_image`, its
    ``full_areas`` in pixels) at least ``min_visible`` of its area visible.

    Returns (mask bool [H, W], the window (row, column slices) that holds it, and the window's
    pixel coordinates yy, xx float32), or None when no try fits.
    """
    height, width = owner.shape
    min_side = min(height, width)
    for _attempt in range(12):
        radius = rng.uniform(*spec.radius_range) * min_side
        cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
        aspect = rng.uniform(*spec.aspect_range) if spec.aspect_range else 1.0
        # Every shape lies within 1.45 radii of its centre: draw in that window only.
        reach = 1.45 * radius
        window = (
            slice(max(int(cy - reach), 0), min(int(cy + reach) + 2, height)),
            slice(max(int(cx - reach), 0), min(int(cx + reach) + 2, width)),
        )
        yy, xx = np.mgrid[window].astype(np.float32)
        mask = np.zeros((height, width), bool)
        mask[window] = _shape_mask(shape, rng, yy - cy, xx - cx, radius, aspect)
        if mask.sum() < 40:
            continue
        remaining = np.bincount(owner[~mask], minlength=len(full_areas) + 1)[1:]
        if all(remaining[k] >= min_visible * full_areas[k] for k in range(len(full_areas))):
            return mask, window, yy, xx
    return None


def _paint_item(
    rng: np.random.Generator, image: np.ndarray, style: ClassStyle, mask: np.ndarray, window: tuple[slice, slice], yy: np.ndarray, xx: np.ndarray
) -> None:
    """Paint ``style``'s colours, blended by its texture, with a random shade and colour jitter,
    into ``image`` float32 [H, W, 3] where ``mask`` is set (as :func:`_place_item` returns them)."""
    weight = _texture(style.texture, rng, yy, xx)[mask[window]][:, None]
    jitter = rng.uniform(-25, 25, size=3)
    shade = rng.uniform(0.8, 1.15)
    colours = weight * np.asarray(style.colour_a, np.float32) + (1 - weight) * np.asarray(style.colour_b, np.float32)
    image[mask] = colours * shade + jitter


def _annotated(image: np.ndarray, owner: np.ndarray, item_labels: list[int], item_shapes: list[str]) -> SyntheticImage:
    """The drawn image with its label maps and the boxes of its objects' visible pixels, from
    ``owner`` (k + 1 where item k is on top) and each item's label (0: distractor) and shape."""
    objects = [k for k, label in enumerate(item_labels) if label]
    instance_lut = np.zeros(len(item_labels) + 1, np.uint8)
    instance_lut[np.asarray(objects, np.int64) + 1] = np.arange(1, len(objects) + 1)
    object_map = instance_lut[owner]
    boxes = []
    for m in range(len(objects)):
        rows = np.flatnonzero((object_map == m + 1).any(axis=1))
        cols = np.flatnonzero((object_map == m + 1).any(axis=0))
        boxes.append([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
    label_lut = np.asarray([0] + item_labels, np.uint8)
    return SyntheticImage(
        image=np.clip(image, 0, 255).astype(np.uint8),
        class_map=label_lut[owner],
        object_map=object_map,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        labels=np.asarray([item_labels[k] for k in objects], np.int64),
        shapes=[item_shapes[k] for k in objects],
        distractor_mask=(owner > 0) & (object_map == 0),
    )


def draw_image(
    rng: np.random.Generator,
    height: int = 128,
    width: int = 128,
    max_objects: int = 4,
    min_visible: float = 0.45,
    noise_sigma: float = 8.0,
    preset: str = "easy",
) -> SyntheticImage:
    """Draw one image of ``preset`` with 1..``max_objects`` labelled objects (see the module
    docstring); :func:`generate` fills in the preset's default size, count and visibility."""
    spec = get_preset(preset)
    if spec.cluttered:
        image = _cluttered_background(rng, height, width, spec.palette)
    else:
        image = _background(rng, height, width)
    # Which drawn item (object or distractor) is on top at each pixel: k + 1 for item k.
    owner = np.zeros((height, width), np.uint16)
    full_areas: list[int] = []
    item_labels: list[int] = []  # 0 for a distractor
    item_shapes: list[str] = []
    for labelled in _item_kinds(rng, spec, max_objects):
        label, style, shape = _item_look(rng, spec, labelled)
        placed = _place_item(rng, spec, shape, owner, full_areas, min_visible)
        if placed is None:
            continue
        mask, window, yy, xx = placed
        _paint_item(rng, image, style, mask, window, yy, xx)
        owner[mask] = len(full_areas) + 1
        full_areas.append(int(mask.sum()))
        item_labels.append(label)
        item_shapes.append(shape)
    image += rng.normal(0.0, noise_sigma, size=image.shape).astype(np.float32)
    return _annotated(image, owner, item_labels, item_shapes)


def annotation_xml(image_id: str, drawn: SyntheticImage, class_names: Sequence[str] = CLASS_NAMES) -> str:
    """VOC annotation XML text (1-based inclusive corners) for a drawn image."""
    height, width = drawn.class_map.shape
    objects = []
    for box, label in zip(drawn.boxes, drawn.labels):
        x0, y0, x1, y1 = (int(v) for v in box)
        objects.append(
            f"  <object>\n    <name>{class_names[label]}</name>\n    <pose>Unspecified</pose>\n"
            f"    <truncated>0</truncated>\n    <difficult>0</difficult>\n    <bndbox>\n"
            f"      <xmin>{x0 + 1}</xmin>\n      <ymin>{y0 + 1}</ymin>\n      <xmax>{x1}</xmax>\n"
            f"      <ymax>{y1}</ymax>\n    </bndbox>\n  </object>\n"
        )
    return (
        f"<annotation>\n  <folder>synthetic</folder>\n  <filename>{image_id}.jpg</filename>\n"
        f"  <size>\n    <width>{width}</width>\n    <height>{height}</height>\n    <depth>3</depth>\n  </size>\n"
        f"  <segmented>1</segmented>\n{''.join(objects)}</annotation>\n"
    )


def _write_image(out: Path, image_id: str, drawn: SyntheticImage, jpeg_quality: int, class_names: Sequence[str]) -> None:
    buffer = io.BytesIO()
    Image.fromarray(drawn.image).save(buffer, format="JPEG", quality=jpeg_quality)
    atomic_write_bytes(out / "JPEGImages" / f"{image_id}.jpg", buffer.getvalue())
    atomic_write_bytes(out / "Annotations" / f"{image_id}.xml", annotation_xml(image_id, drawn, class_names).encode())
    atomic_write_bytes(out / "SegmentationClass" / f"{image_id}.png", encode_label_png(drawn.class_map))
    atomic_write_bytes(out / "SegmentationObject" / f"{image_id}.png", encode_label_png(drawn.object_map))


def _check_arguments(
    spec: Preset,
    num_train: int,
    num_val: int,
    height: int,
    width: int,
    max_objects: int,
    min_visible: float,
    noise_sigma: float,
    jpeg_quality: int,
    seed: int,
) -> None:
    """An :class:`InputError`, naming the option, for the first of :func:`generate`'s arguments
    (preset defaults filled in) out of its range."""
    if num_train < 0 or num_val < 0 or num_train + num_val == 0:
        raise InputError(f"--num-train/--num-val must be >= 0 and not both 0, got {num_train}/{num_val}")
    if not (16 <= height <= 4096 and 16 <= width <= 4096):
        raise InputError(f"--height/--width must be in 16..4096, got {height}x{width}")
    if not 1 <= max_objects <= 254 - spec.max_distractors:
        raise InputError(f"--max-objects must be in 1..{254 - spec.max_distractors}, got {max_objects}")
    if not 0 < min_visible <= 1:
        raise InputError(f"--min-visible must be in (0, 1], got {min_visible}")
    if not 1 <= jpeg_quality <= 95:
        raise InputError(f"--jpeg-quality must be in 1..95, got {jpeg_quality}")
    if not 0 <= noise_sigma <= 255:
        raise InputError(f"--noise-sigma must be in 0..255, got {noise_sigma}")
    if seed < 0:
        raise InputError(f"--seed must be 0 or more, got {seed}")


def _write_image_sets(out: Path, ids: dict[str, list[str]]) -> None:
    """The VOC split lists ImageSets/{Segmentation,Main}/{train,val,trainval}.txt of the image ids
    of each split (``ids``: train and val)."""
    for folder in ("Segmentation", "Main"):
        for split in ids:
            atomic_write_lines(out / "ImageSets" / folder / f"{split}.txt", ids[split])
        atomic_write_lines(out / "ImageSets" / folder / "trainval.txt", ids["train"] + ids["val"])


def generate(
    out_dir,
    num_train: int,
    num_val: int,
    seed: int = 0,
    height: Optional[int] = None,
    width: Optional[int] = None,
    max_objects: Optional[int] = None,
    min_visible: Optional[float] = None,
    noise_sigma: float = 8.0,
    jpeg_quality: int = 90,
    preset: str = "easy",
) -> Path:
    """Write the synthetic dataset in VOC layout to ``out_dir`` and return its path.

    Args:
        out_dir: output folder (created; existing files of the same names are replaced).
        num_train, num_val: number of images in the ``train`` and ``val`` splits.
        seed: the generator seed (0 or more); the same arguments write the same files.
        height, width: image size in pixels (16..4096); None: the preset's (easy 128 x 128, hard
            and pretrain 192 x 256).
        max_objects: at most this many labelled objects per image (1..254, less the preset's
            distractors); None: the preset's (easy 4, hard and pretrain 5).
        min_visible: fraction of each object's area that occlusion must leave visible, in (0, 1];
            None: the preset's (easy 0.45, hard and pretrain 0.3).
        noise_sigma: standard deviation of the per-pixel Gaussian noise, in 0..255 intensity units.
        jpeg_quality: JPEG quality of the written images (1..95).
        preset: ``easy``, ``hard`` or ``pretrain`` (:data:`PRESETS`, see the module docstring).
    """
    spec = get_preset(preset)
    height = spec.height if height is None else height
    width = spec.width if width is None else width
    max_objects = spec.max_objects if max_objects is None else max_objects
    min_visible = spec.min_visible if min_visible is None else min_visible
    _check_arguments(spec, num_train, num_val, height, width, max_objects, min_visible, noise_sigma, jpeg_quality, seed)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: --out exists and is not a folder")
    splits = {"train": num_train, "val": num_val}
    ids: dict[str, list[str]] = {}
    for split_index, (split, count) in enumerate(splits.items()):
        ids[split] = [f"{split}_{i:06d}" for i in range(count)]
        for i, image_id in enumerate(ids[split]):
            rng = np.random.default_rng([seed, split_index, i])
            drawn = draw_image(rng, height, width, max_objects, min_visible, noise_sigma, preset)
            _write_image(out, image_id, drawn, jpeg_quality, spec.class_names)
    _write_image_sets(out, ids)
    atomic_write_lines(out / "classes.txt", spec.class_names)
    record = {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "num_train": num_train,
        "num_val": num_val,
        "height": height,
        "width": width,
        "max_objects": max_objects,
        "min_visible": min_visible,
        "noise_sigma": noise_sigma,
        "jpeg_quality": jpeg_quality,
        "class_names": list(spec.class_names),
    }
    if spec.name != "easy":  # the easy record keeps its bytes from before presets (recorded_preset)
        record["preset"] = spec.name
    atomic_write_json(out / "synthetic.json", record)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m boxsup_ext.data.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder (VOC layout)")
    parser.add_argument("--num-train", type=int, default=200, help="images in the train split")
    parser.add_argument("--num-val", type=int, default=50, help="images in the val split")
    parser.add_argument("--seed", type=int, default=0)
    defaults = "; ".join(f"{p.name}: {p.height}x{p.width}, {p.max_objects} objects, {p.min_visible}" for p in PRESETS.values())
    parser.add_argument("--preset", default="easy", help=f"dataset preset, default easy (its size, objects, visible: {defaults})")
    parser.add_argument("--height", type=int, help="image height in pixels (default: the preset's)")
    parser.add_argument("--width", type=int, help="image width in pixels (default: the preset's)")
    parser.add_argument("--max-objects", type=int, help="at most this many labelled objects per image (default: the preset's)")
    parser.add_argument("--min-visible", type=float, help="visible fraction occlusion must leave (default: the preset's)")
    parser.add_argument("--noise-sigma", type=float, default=8.0, help="pixel noise standard deviation (0..255)")
    parser.add_argument("--jpeg-quality", type=int, default=90)
    args = parser.parse_args(argv)
    out = generate(
        args.out, args.num_train, args.num_val, args.seed, args.height, args.width,
        args.max_objects, args.min_visible, args.noise_sigma, args.jpeg_quality, args.preset,
    )  # fmt: skip
    print(f"wrote {args.num_train} train + {args.num_val} val images ({args.preset}) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
