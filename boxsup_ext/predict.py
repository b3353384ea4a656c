"""Predict label maps for images with a trained model.

    python -m boxsup_ext.predict --checkpoint FILE INPUT... --out DIR [--crf] [--scales 0.8,1.0,1.2]
        [--flip] [--overwrite]

INPUT is an image file or a folder (searched recursively for .jpg/.jpeg/.png/.bmp/.tif/.tiff/.webp).
For each image ``DIR/<name>.png`` is the label map as a VOC-palette PNG (pixel values are class
indices) and ``DIR/<name>_overlay.png`` shows the image and the labels blended over it side by
side. ``<name>`` is the file stem, or the path below the folder for folder inputs. Unreadable
inputs are reported by name on stderr and skipped; the rest are still written, and the exit status
is 1 when anything was skipped. Images inside DIR itself are not inputs.

Existing files are never replaced unless they are this command's own earlier outputs:
``DIR/.boxsup-outputs.json`` lists what it wrote (with content hashes), so a rerun replaces its own
label maps, while a file it did not write (your photo ``DIR/x.png``, or an output you have since
edited) stops the command before anything is written. ``--overwrite`` replaces such files too.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
from PIL import Image

from boxsup_ext.evaluation.evaluator import add_inference_arguments, load_predictor, settings_from_args
from boxsup_ext.utils import InputError, OutputManifest, ensure_output_dir, run_cli

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def collect_inputs(inputs: Sequence[Path], exclude: Iterable[Path] = ()) -> list[tuple[Path, str]]:
    """Expand files and folders into ``(path, output name)`` pairs, in a stable order.

    Files keep their stem; images found under a folder are named by their path below it with
    ``/`` replaced by ``__``. A name whose outputs (``<name>.png``, ``<name>_overlay.png``) would
    collide with an earlier input's gets ``_2``, ``_3`` ... appended. Files in ``exclude`` (this
    command's earlier outputs) are left out of folders, so a rerun does not predict its own label
    maps. A path that does not exist is an :class:`InputError`.
    """
    skip = {Path(path).resolve() for path in exclude}
    found: list[tuple[Path, str]] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            for path in sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
                if path.resolve() in skip:
                    continue
                found.append((path, "__".join(path.relative_to(item).with_suffix("").parts)))
        elif item.exists():
            found.append((item, item.stem))
        else:
            raise InputError(f"input {item} does not exist; give image files or folders of images")
    used: set[str] = set()
    named = []
    for path, base in found:
        name, count = base, 1
        while any(file in used for file in output_files(name)):
            count += 1
            name = f"{base}_{count}"
        used.update(output_files(name))
        named.append((path, name))
    return named


def output_files(name: str, overlay: bool = True) -> list[str]:
    """The files written for an image named ``name``: its label map, then its overlay."""
    return [f"{name}.png"] + ([f"{name}_overlay.png"] if overlay else [])


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
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="output folder; OUT/.boxsup-outputs.json records the files this command wrote, which a rerun "
        "replaces; any other existing file stops the command before it writes anything (see --overwrite)",
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="label colour weight in the overlay (0..1)")
    parser.add_argument("--no-overlay", action="store_true", help="write only the label PNGs")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing files in --out that this command did not write (its own earlier outputs are always replaced)",
    )
    add_inference_arguments(parser)
    args = parser.parse_args(argv)
    if not 0.0 <= args.alpha <= 1.0:
        raise InputError(f"--alpha must be in [0, 1], got {args.alpha}")
    settings = settings_from_args(args)
    ensure_output_dir(args.out, "--out", create=False)
    outputs = OutputManifest(args.out, "boxsup_ext.predict", overwrite=args.overwrite)
    items = collect_inputs(args.inputs, exclude=[args.out / name for name in outputs.files])
    if not items:
        raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {', '.join(map(str, args.inputs))}")
    targets = [file for _, name in items for file in output_files(name, not args.no_overlay)]
    outputs.check(targets)
    predictor, _ = load_predictor(args.checkpoint, settings, args.device)

    from boxsup_ext.data.palette import encode_label_png
    from tqdm import tqdm

    ensure_output_dir(args.out, "--out")
    skipped: list[str] = []
    written = 0
    chunk = max(1, settings.batch_size) * max(1, settings.crf_workers)
    try:
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
                files: dict[str, bytes] = {}
                for (image, name), label in zip(batch, labels):
                    label_file, *overlay_file = output_files(name, not args.no_overlay)
                    files[label_file] = encode_label_png(label)
                    if overlay_file:
                        files[overlay_file[0]] = _png_bytes(overlay_image(image, label, args.alpha))
                if files:
                    # Hashes on disk first, then the files: a kill leaves nothing of ours unrecorded,
                    # and a skipped input's name is never recorded, so it never becomes "ours".
                    outputs.write_files(files)
                written += len(labels)
                bar.update(len(items[start : start + chunk]))
    finally:
        outputs.save()
    print(f"wrote {written} label maps to {args.out}" + (f"; skipped {len(skipped)} unreadable: {', '.join(skipped)}" if skipped else ""))
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
