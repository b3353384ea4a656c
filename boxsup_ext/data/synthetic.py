"""A small built-in dataset in the VOC layout where boxes are clearly worse labels than masks.

Every image holds 1..``max_objects`` objects on a textured, noisy background. Each object's shape is
drawn from {ellipse, triangle, star, ring, blob} independently of its class, at a random size and
rotation, so a class can only be told apart by its appearance (colour pair and texture). Objects
overlap and occlude each other (each keeps at least ``min_visible`` of its own area visible), and
the filled box of such shapes covers much more than the object: that is the BoxSup question.

Written layout (see :mod:`boxsup_ext.data.voc`): JPEGImages/*.jpg, Annotations/*.xml (boxes of the
visible pixels), SegmentationClass/*.png (palette), SegmentationObject/*.png (instance ids 1..M in
box order), ImageSets/{Segmentation,Main}/{train,val,trainval}.txt, classes.txt and synthetic.json.
The output is a pure function of the arguments: image i of a split is drawn from its own seeded
generator.

CLI: ``python -m boxsup_ext.data.synthetic --out DIR --num-train N --num-val M --seed S``.
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
from boxsup_ext.utils import InputError, atomic_write, atomic_write_bytes, atomic_write_json, run_cli

# (name, first colour, second colour, texture): classes differ by colour pair and texture.
CLASS_STYLES = (
    ("red_stripes", (200, 40, 40), (250, 160, 60), "stripes"),
    ("green_dots", (40, 150, 60), (190, 230, 120), "dots"),
    ("blue_checker", (40, 70, 200), (150, 200, 250), "checker"),
    ("yellow_speckle", (220, 200, 40), (120, 100, 20), "speckle"),
    ("purple_waves", (130, 50, 160), (230, 140, 220), "waves"),
)
CLASS_NAMES = ("background",) + tuple(style[0] for style in CLASS_STYLES)
SHAPES = ("ellipse", "triangle", "star", "ring", "blob")
FORMAT_VERSION = 1


@dataclass
class SyntheticImage:
    """One drawn image.

    Attributes:
        image: uint8 [H, W, 3] RGB (before JPEG compression).
        class_map: uint8 [H, W] class index per pixel (0 = background).
        object_map: uint8 [H, W] instance id per pixel (0 = none, k + 1 = object k).
        boxes: float32 [M, 4] tight (x0, y0, x1, y1) half-open boxes of the visible pixels.
        labels: int64 [M] classes in [1, 6).
        shapes: the M shape names.
    """

    image: np.ndarray
    class_map: np.ndarray
    object_map: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    shapes: list[str]


def _shape_mask(shape: str, rng: np.random.Generator, dy: np.ndarray, dx: np.ndarray, radius: float) -> np.ndarray:
    """bool mask of ``shape`` centred at the origin of the pixel offsets (dy, dx), size ~``radius`` px."""
    angle = rng.uniform(0, 2 * np.pi)
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / radius
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / radius
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
    raise ValueError(f"unknown shape {shape!r}")


def _texture(kind: str, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """float32 [H, W] in [0, 1]: the weight of a class's first colour at each pixel."""
    angle = rng.uniform(0, np.pi)
    along = xx * np.cos(angle) + yy * np.sin(angle)
    if kind == "stripes":
        return (np.sin(2 * np.pi * along / rng.uniform(5, 8) + rng.uniform(0, 6.3)) > 0).astype(np.float32)
    if kind == "dots":
        period = rng.uniform(5, 8)
        across = -xx * np.sin(angle) + yy * np.cos(angle)
        dist = np.hypot((along % period) - period / 2, (across % period) - period / 2)
        return (dist > period * 0.3).astype(np.float32)
    if kind == "checker":
        cell = rng.uniform(4, 7)
        across = -xx * np.sin(angle) + yy * np.cos(angle)
        return ((np.floor(along / cell) + np.floor(across / cell)) % 2).astype(np.float32)
    if kind == "speckle":
        return (rng.random(yy.shape) > 0.35).astype(np.float32)
    if kind == "waves":
        across = -xx * np.sin(angle) + yy * np.cos(angle)
        return (0.5 + 0.5 * np.sin(2 * np.pi * (along + 3 * np.sin(across / 4)) / rng.uniform(9, 14))).astype(np.float32)
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


def draw_image(
    rng: np.random.Generator,
    height: int = 128,
    width: int = 128,
    max_objects: int = 4,
    min_visible: float = 0.45,
    noise_sigma: float = 8.0,
) -> SyntheticImage:
    """Draw one image with 1..``max_objects`` objects (see the module docstring)."""
    image = _background(rng, height, width)
    object_map = np.zeros((height, width), np.uint8)
    full_areas: list[int] = []
    labels: list[int] = []
    shapes: list[str] = []
    min_side = min(height, width)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        label = int(rng.integers(1, len(CLASS_NAMES)))
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        for _attempt in range(12):
            radius = rng.uniform(0.12, 0.34) * min_side
            cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
            # Every shape lies within 1.45 radii of its centre: draw in that window only.
            reach = 1.45 * radius
            window = (
                slice(max(int(cy - reach), 0), min(int(cy + reach) + 2, height)),
                slice(max(int(cx - reach), 0), min(int(cx + reach) + 2, width)),
            )
            yy, xx = np.mgrid[window].astype(np.float32)
            mask = np.zeros((height, width), bool)
            mask[window] = _shape_mask(shape, rng, yy - cy, xx - cx, radius)
            if mask.sum() < 40:
                continue
            remaining = np.bincount(object_map[~mask], minlength=len(full_areas) + 1)[1:]
            if all(remaining[k] >= min_visible * full_areas[k] for k in range(len(full_areas))):
                break
        else:
            continue
        _name, colour_a, colour_b, texture = CLASS_STYLES[label - 1]
        weight = _texture(texture, rng, yy, xx)[mask[window]][:, None]
        jitter = rng.uniform(-25, 25, size=3)
        shade = rng.uniform(0.8, 1.15)
        colours = weight * np.asarray(colour_a, np.float32) + (1 - weight) * np.asarray(colour_b, np.float32)
        image[mask] = colours * shade + jitter
        object_map[mask] = len(full_areas) + 1
        full_areas.append(int(mask.sum()))
        labels.append(label)
        shapes.append(shape)
    image += rng.normal(0.0, noise_sigma, size=image.shape).astype(np.float32)
    boxes = []
    for k in range(len(full_areas)):
        rows = np.flatnonzero((object_map == k + 1).any(axis=1))
        cols = np.flatnonzero((object_map == k + 1).any(axis=0))
        boxes.append([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
    label_lut = np.asarray([0] + labels, np.uint8)
    return SyntheticImage(
        image=np.clip(image, 0, 255).astype(np.uint8),
        class_map=label_lut[object_map],
        object_map=object_map,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        labels=np.asarray(labels, np.int64),
        shapes=shapes,
    )


def annotation_xml(image_id: str, drawn: SyntheticImage) -> str:
    """VOC annotation XML text (1-based inclusive corners) for a drawn image."""
    height, width = drawn.class_map.shape
    objects = []
    for box, label in zip(drawn.boxes, drawn.labels):
        x0, y0, x1, y1 = (int(v) for v in box)
        objects.append(
            f"  <object>\n    <name>{CLASS_NAMES[label]}</name>\n    <pose>Unspecified</pose>\n"
            f"    <truncated>0</truncated>\n    <difficult>0</difficult>\n    <bndbox>\n"
            f"      <xmin>{x0 + 1}</xmin>\n      <ymin>{y0 + 1}</ymin>\n      <xmax>{x1}</xmax>\n"
            f"      <ymax>{y1}</ymax>\n    </bndbox>\n  </object>\n"
        )
    return (
        f"<annotation>\n  <folder>synthetic</folder>\n  <filename>{image_id}.jpg</filename>\n"
        f"  <size>\n    <width>{width}</width>\n    <height>{height}</height>\n    <depth>3</depth>\n  </size>\n"
        f"  <segmented>1</segmented>\n{''.join(objects)}</annotation>\n"
    )


def _write_image(out: Path, image_id: str, drawn: SyntheticImage, jpeg_quality: int) -> None:
    buffer = io.BytesIO()
    Image.fromarray(drawn.image).save(buffer, format="JPEG", quality=jpeg_quality)
    atomic_write_bytes(out / "JPEGImages" / f"{image_id}.jpg", buffer.getvalue())
    atomic_write_bytes(out / "Annotations" / f"{image_id}.xml", annotation_xml(image_id, drawn).encode())
    atomic_write_bytes(out / "SegmentationClass" / f"{image_id}.png", encode_label_png(drawn.class_map))
    atomic_write_bytes(out / "SegmentationObject" / f"{image_id}.png", encode_label_png(drawn.object_map))


def _write_list(path: Path, ids: Sequence[str]) -> None:
    with atomic_write(path, "w") as handle:
        handle.write("".join(f"{image_id}\n" for image_id in ids))


def generate(
    out_dir,
    num_train: int,
    num_val: int,
    seed: int = 0,
    height: int = 128,
    width: int = 128,
    max_objects: int = 4,
    min_visible: float = 0.45,
    noise_sigma: float = 8.0,
    jpeg_quality: int = 90,
) -> Path:
    """Write the synthetic dataset in VOC layout to ``out_dir`` and return its path.

    Args:
        out_dir: output folder (created; existing files of the same names are replaced).
        num_train, num_val: number of images in the ``train`` and ``val`` splits.
        seed: the generator seed; the same arguments write the same files.
        height, width: image size in pixels (16..4096).
        max_objects: at most this many objects per image (1..254).
        min_visible: fraction of each object's area that occlusion must leave visible, in (0, 1].
        noise_sigma: standard deviation of the per-pixel Gaussian noise, in 0..255 intensity units.
        jpeg_quality: JPEG quality of the written images (1..95).
    """
    if num_train < 0 or num_val < 0 or num_train + num_val == 0:
        raise InputError(f"--num-train/--num-val must be >= 0 and not both 0, got {num_train}/{num_val}")
    if not (16 <= height <= 4096 and 16 <= width <= 4096):
        raise InputError(f"--height/--width must be in 16..4096, got {height}x{width}")
    if not 1 <= max_objects <= 254:
        raise InputError(f"--max-objects must be in 1..254, got {max_objects}")
    if not 0 < min_visible <= 1:
        raise InputError(f"--min-visible must be in (0, 1], got {min_visible}")
    if not 1 <= jpeg_quality <= 95:
        raise InputError(f"--jpeg-quality must be in 1..95, got {jpeg_quality}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: --out exists and is not a folder")
    splits = {"train": num_train, "val": num_val}
    ids: dict[str, list[str]] = {}
    for split_index, (split, count) in enumerate(splits.items()):
        ids[split] = [f"{split}_{i:06d}" for i in range(count)]
        for i, image_id in enumerate(ids[split]):
            rng = np.random.default_rng([seed, split_index, i])
            drawn = draw_image(rng, height, width, max_objects, min_visible, noise_sigma)
            _write_image(out, image_id, drawn, jpeg_quality)
    for folder in ("Segmentation", "Main"):
        for split in splits:
            _write_list(out / "ImageSets" / folder / f"{split}.txt", ids[split])
        _write_list(out / "ImageSets" / folder / "trainval.txt", ids["train"] + ids["val"])
    _write_list(out / "classes.txt", CLASS_NAMES)
    atomic_write_json(
        out / "synthetic.json",
        {
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
            "class_names": list(CLASS_NAMES),
        },
    )
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m boxsup_ext.data.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder (VOC layout)")
    parser.add_argument("--num-train", type=int, default=200, help="images in the train split")
    parser.add_argument("--num-val", type=int, default=50, help="images in the val split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=128, help="image height in pixels")
    parser.add_argument("--width", type=int, default=128, help="image width in pixels")
    parser.add_argument("--max-objects", type=int, default=4, help="at most this many objects per image")
    parser.add_argument("--min-visible", type=float, default=0.45, help="visible fraction occlusion must leave")
    parser.add_argument("--noise-sigma", type=float, default=8.0, help="pixel noise standard deviation (0..255)")
    parser.add_argument("--jpeg-quality", type=int, default=90)
    args = parser.parse_args(argv)
    out = generate(
        args.out, args.num_train, args.num_val, args.seed, args.height, args.width,
        args.max_objects, args.min_visible, args.noise_sigma, args.jpeg_quality,
    )  # fmt: skip
    print(f"wrote {args.num_train} train + {args.num_val} val images to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
