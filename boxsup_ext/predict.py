"""Predict label maps for images with a trained model.

    python -m boxsup_ext.predict --checkpoint FILE INPUT... --out DIR [--crf] [--scales 0.8,1.0,1.2]
        [--flip]

INPUT is an image file or a folder (searched recursively for .jpg/.jpeg/.png/.bmp/.tif/.tiff/.webp).
For each image ``DIR/<name>.png`` is the label map as a VOC-palette PNG (pixel values are class
indices) and ``DIR/<name>_overlay.png`` shows the image and the labels blended over it side by
side. ``<name>`` is the file stem, or the path below the folder for folder inputs. Unreadable
inputs are reported by name on stderr and skipped; the rest are still written, and the exit status
is 1 when anything was skipped.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from boxsup_ext.evaluation.evaluator import add_inference_arguments, load_predictor, settings_from_args
from boxsup_ext.utils import InputError, atomic_write_bytes, run_cli

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def collect_inputs(inputs: Sequence[Path]) -> list[tuple[Path, str]]:
    """Expand files and folders into ``(path, output name)`` pairs, in a stable order.

    Files keep their stem; images found under a folder are named by their path below it with
    ``/`` replaced by ``__``. A name used twice gets ``_2``, ``_3`` ... appended. A path that does
    not exist is an :class:`InputError`.
    """
    found: list[tuple[Path, str]] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            for path in sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
                found.append((path, "__".join(path.relative_to(item).with_suffix("").parts)))
        elif item.exists():
            found.append((item, item.stem))
        else:
            raise InputError(f"input {item} does not exist; give image files or folders of images")
    seen: dict[str, int] = {}
    named = []
    for path, name in found:
        seen[name] = seen.get(name, 0) + 1
        named.append((path, name if seen[name] == 1 else f"{name}_{seen[name]}"))
    return named


def read_rgb(path: Path) -> np.ndarray:
    """uint8 [H, W, 3] RGB pixels of an image file; an :class:`InputError` naming it if unreadable."""
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise InputError(f"{path}: cannot read image ({err.__class__.__name__}: {err})") from None


def overlay_image(image: np.ndarray, label: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Side-by-side uint8 [H, 2W, 3]: the image, then the image blended with the label colours
    (VOC palette; background pixels are left unblended, weight ``alpha`` on the label colour)."""
    from boxsup_ext.figures import colorize

    colours = colorize(label).astype(np.float32)
    blend = image.astype(np.float32)
    foreground = (label != 0)[..., None]
    blend = np.where(foreground, (1.0 - alpha) * blend + alpha * colours, blend)
    return np.concatenate([image, blend.round().astype(np.uint8)], axis=1)


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m boxsup_ext.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint written by boxsup_ext.train")
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files or folders")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--alpha", type=float, default=0.5, help="label colour weight in the overlay (0..1)")
    parser.add_argument("--no-overlay", action="store_true", help="write only the label PNGs")
    add_inference_arguments(parser)
    args = parser.parse_args(argv)
    if not 0.0 <= args.alpha <= 1.0:
        raise InputError(f"--alpha must be in [0, 1], got {args.alpha}")
    settings = settings_from_args(args)
    items = collect_inputs(args.inputs)
    if not items:
        raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {', '.join(map(str, args.inputs))}")
    predictor, _ = load_predictor(args.checkpoint, settings, args.device)

    from boxsup_ext.data import save_label_png
    from tqdm import tqdm

    skipped: list[str] = []
    written = 0
    chunk = max(1, settings.batch_size) * max(1, settings.crf_workers)
    with tqdm(total=len(items), desc="predict", unit="img", disable=len(items) < 2) as bar:
        for start in range(0, len(items), chunk):
            batch = []
            for path, name in items[start : start + chunk]:
                try:
                    batch.append((read_rgb(path), name))
                except InputError as err:
                    print(f"skipped {err}", file=sys.stderr)
                    skipped.append(str(path))
            labels = predictor.labels([image for image, _ in batch]) if batch else []
            for (image, name), label in zip(batch, labels):
                save_label_png(args.out / f"{name}.png", label)
                if not args.no_overlay:
                    atomic_write_bytes(args.out / f"{name}_overlay.png", _png_bytes(overlay_image(image, label, args.alpha)))
                written += 1
            bar.update(len(items[start : start + chunk]))
    print(f"wrote {written} label maps to {args.out}" + (f"; skipped {len(skipped)} unreadable: {', '.join(skipped)}" if skipped else ""))
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
