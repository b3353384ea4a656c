"""What would SAM-shaped candidates do to BoxSup's labels, beside Selective Search, without SAM weights?

    python benchmarks/candidate_quality.py --out runs/candidate_quality [--json out.json]
        [--data DIR] [--sources selective_search,rectangles,sam_shaped,sam_shaped_exact]
        [--jitter 4] [--jitter-amount 0.1] [--shift 3] [--flip 0.2] [--noise-seed 0]
        [--train-epochs N] [--set KEY=VALUE ...]

Builds (or reuses) the synthetic dataset of ``--preset`` (default ``hard``, 96 x 128, 160 training
images) in ``OUT/data`` with ``prepare_synthetic``, together with its Selective Search store (the
demo's settings: ks 25, 50, 100, min_size 10, colour spaces hsv, lab, rgb) and its rectangles store.
``--data DIR`` reads an existing folder of that layout instead (``DIR/dataset``,
``DIR/proposals_selective_search``, ``DIR/proposals_rectangles``) and never writes there: a store
that is missing there, or was made with other settings, is made in ``OUT`` instead. The SAM-shaped
stores are made in ``OUT`` (one per noise setting) through the ordinary store writer (``generate_proposals``) by the method
``sam_shaped``, which this script registers for itself; the package has no method that reads the
ground truth.

For each candidate source it measures, on the training images:

1. proposal quality against the ground-truth instance masks: mask ABO and recall@0.5 / 0.7
   (``boxsup_ext.proposals.evaluate.evaluate_store``, as ``python -m boxsup_ext.proposals eval``);
2. the labels of one relabel round against the training ground truth (mIoU of the confusion matrix,
   and the share of ground-truth pixels the labels leave as ignore), with the shipped recipe's
   settings at its first round (``configs/synthetic_boxsup.yaml``'s ``relabel:`` section with
   ``lam`` 0: the network is untrained then; topk 5, min_iou 0.5, clip_to_box, box IoU) and with
   the greedy choice (the same with topk 1). ``lam`` 0 makes the network irrelevant; it is a
   ``tiny_fcn`` of width 4;
3. candidates per image, generation seconds per image (recorded in the store's entries; for the
   SAM-shaped sources that is the noise model's time, NOT SAM's: see docs/proposals.md for SAM's)
   and relabel seconds per image.

``--train-epochs N`` (default 0: off) also trains BoxSup for N epochs on each source's store
(``configs/synthetic_boxsup.yaml``, crop = the images' shorter side, one thread, validation at the
end; ``--set`` overrides more keys) and reports the validation mIoU and the last epoch's labels' mIoU
against the training ground truth (the trainer's ``label_miou``). Prints a table; ``--json``
writes every figure.

THE SAM-SHAPED NOISE MODEL IS AN ASSUMPTION ABOUT SAM, NOT SAM. It imitates what the ``sam`` method
(``boxsup_ext/proposals/sam.py``) stores per box -- SAM's 3 multimask outputs for the box and the
best output for each of ``jitter`` jittered copies of the box -- by perturbing the box's
ground-truth instance mask O (its visible pixels, from the dataset's SegmentationObject). How close
real SAM masks are to O on these images is not known here; the figures say what candidates of this
shape would do, not what SAM does. One random generator per image, seeded by (``--noise-seed``,
image id) (``sam.image_rng``), draws, box by box in the boxes' order:

* ``shift(M, r)``: M dilated (r > 0) or eroded (r < 0) by an elliptical ``2|r|+1`` kernel; an
  erosion that would keep less than half of M's pixels is retried with radius |r| - 1, ..., and
  none is applied if every radius would.
* ``flips(M)``: every pixel within 1 px of M's boundary (M's 3 x 3 dilation minus its 3 x 3
  erosion) changes membership independently with probability ``--flip`` (default 0.2).
* whole (SAM's object-level output): ``flips(shift(O, s * r))``, r uniform in {1, ..., ``--shift``}
  (default 3; r = 0 when ``--shift`` is 0), s = -1 or +1 with equal odds.
* part: O cut by a line of random direction (uniform angle) through O's centroid moved along the
  line's normal by u times half O's extent along that normal, u uniform in [-0.3, 0.3]; the side
  holding more of O is kept, then its largest 8-connected piece; then ``flips``.
* over-segment (whole-box-ish): O dilated by r uniform in {2, ..., 5}, united with a filled
  axis-aligned ellipse centred at a uniformly random point of the box's outline, semi-axes uniform
  in [0.15, 0.35] times the box's width / height (at least 1 px), cut to the image; then ``flips``.
* ``--jitter`` variants (default 4): the box's jittered copies exactly as the ``sam`` method draws
  them (``sam.jittered_boxes``, ``--jitter-amount`` 0.1), all boxes' copies first; variant k is
  ``flips(shift(O, r_k) & rect_k)``, r_k uniform in {-``--shift``, ..., ``--shift``}, rect_k the
  jittered copy's rectangle (pixel rule of ``core.box_masks``): a prompt that cuts the object is
  assumed to give a mask truncated at the prompt.

Empty masks and exact repeats are dropped as the ``sam`` method drops them (``sam._select``). A
candidate's score is its pixel IoU with O (an oracle score; the relabel step reads no scores).
``sam_shaped_exact`` is the same with ``--shift`` 0, ``--flip`` 0 and ``--jitter-amount`` 0: the
whole mask is O itself, so its mask ABO is 1.0 by construction -- the ceiling of this candidate
shape, not a SAM figure.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # the benchmark runs on one core

import argparse
import dataclasses
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

from boxsup_ext import core
from boxsup_ext.utils import InputError, atomic_write_json, ensure_output_dir, run_cli

METHOD = "sam_shaped"  # registered by this script only (see register)
SOURCES = ("selective_search", "rectangles", "sam_shaped", "sam_shaped_exact")
STORE_SOURCES = ("selective_search", "rectangles")  # made by the package's own methods
EXACT = {"shift": 0, "flip": 0.0, "jitter_amount": 0.0}  # sam_shaped_exact's noise: none
PART_OFFSET = 0.3  # the part's cut: centroid moved by up to this share of half the object's extent
OVER_DILATION = (2, 5)  # the over-segment's dilation radius range, pixels
BLOB_AXES = (0.15, 0.35)  # the over-segment's blob: semi-axes as a share of the box's width / height
RELABEL_BATCH = 16  # images per relabel_batch call


# ---------------------------------------------------------------------------------------------
# the noise model (see the module docstring)


def _kernel(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def shift_boundary(mask: np.ndarray, radius: int) -> np.ndarray:
    """``mask`` bool [H, W] dilated (radius > 0) or eroded (radius < 0) by an elliptical kernel; an
    erosion that would keep less than half the pixels is tried with a smaller radius (none at all
    when every radius would)."""
    if radius == 0 or not mask.any():
        return mask.copy()
    pixels = mask.astype(np.uint8)
    if radius > 0:
        return cv2.dilate(pixels, _kernel(radius)).astype(bool)
    for r in range(-radius, 0, -1):
        eroded = cv2.erode(pixels, _kernel(r), borderType=cv2.BORDER_REPLICATE).astype(bool)
        if 2 * int(eroded.sum()) >= int(mask.sum()):
            return eroded
    return mask.copy()


def flip_boundary(mask: np.ndarray, probability: float, rng: np.random.Generator) -> np.ndarray:
    """``mask`` with each pixel within 1 px of its boundary flipped with ``probability``."""
    pixels = mask.astype(np.uint8)
    square = np.ones((3, 3), np.uint8)
    band = cv2.dilate(pixels, square).astype(bool) & ~cv2.erode(pixels, square, borderType=cv2.BORDER_REPLICATE).astype(bool)
    flips = band & (rng.random(mask.shape) < probability)
    return mask ^ flips


def part_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The larger side of ``mask`` cut by a random line near its centroid, its largest 8-connected piece."""
    angle, offset = rng.uniform(0.0, 2 * np.pi), rng.uniform(-PART_OFFSET, PART_OFFSET)
    ys, xs = np.nonzero(mask)
    if ys.size < 2:
        return mask.copy()
    proj = (xs - xs.mean()) * np.cos(angle) + (ys - ys.mean()) * np.sin(angle)
    side = proj > offset * (proj.max() - proj.min()) / 2
    if 2 * int(side.sum()) < side.size:
        side = ~side
    part = np.zeros_like(mask)
    part[ys[side], xs[side]] = True
    count, pieces, stats, _ = cv2.connectedComponentsWithStats(part.astype(np.uint8), connectivity=8)
    if count <= 2:
        return part
    return pieces == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def over_mask(mask: np.ndarray, box: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``mask`` dilated by 2-5 px, united with an elliptical blob centred on the box's outline."""
    height, width = mask.shape
    radius = int(rng.integers(OVER_DILATION[0], OVER_DILATION[1] + 1))
    x0, y0, x1, y1 = (float(v) for v in box)
    bw, bh = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    t = rng.uniform(0.0, 2 * (bw + bh))  # a point of the outline, walked clockwise from (x0, y0)
    if t < bw:
        cx, cy = x0 + t, y0
    elif t < bw + bh:
        cx, cy = x1, y0 + (t - bw)
    elif t < 2 * bw + bh:
        cx, cy = x1 - (t - bw - bh), y1
    else:
        cx, cy = x0, y1 - (t - 2 * bw - bh)
    a = max(rng.uniform(*BLOB_AXES) * bw, 1.0)
    b = max(rng.uniform(*BLOB_AXES) * bh, 1.0)
    yy, xx = np.mgrid[0:height, 0:width]
    blob = ((xx + 0.5 - cx) / a) ** 2 + ((yy + 0.5 - cy) / b) ** 2 <= 1.0
    return shift_boundary(mask, radius) | blob


_DATASETS: dict[tuple[str, str], object] = {}


def _instances(dataset_root: str, split: str, image_id: str, num_boxes: int) -> np.ndarray:
    """Ground-truth instance masks bool [M, H, W] of one image, aligned with its boxes."""
    from boxsup_ext.data import open_dataset

    key = (str(dataset_root), str(split))
    if key not in _DATASETS:
        _DATASETS[key] = open_dataset(dataset_root, split, kind="auto")
    dataset = _DATASETS[key]
    try:
        index = dataset.index_of(image_id)
    except KeyError:
        raise InputError(f"{METHOD}: image {image_id!r} is not in {dataset_root} split {split!r}") from None
    instances = dataset.load_instances(index)
    if instances is None:
        raise InputError(f"{METHOD}: image {image_id!r} of {dataset_root} has no instance masks (SegmentationObject); "
                         "SAM-shaped candidates are made from them")
    masks = instances[0]
    if masks.shape[0] != num_boxes:
        raise InputError(f"{METHOD}: image {image_id!r} has {masks.shape[0]} instance masks for {num_boxes} boxes")
    return masks


def sam_shaped(
    image: np.ndarray,
    boxes: np.ndarray,
    *,
    image_id: str,
    dataset_root: str,
    split: str,
    jitter: int = 4,
    jitter_amount: float = 0.1,
    shift: int = 3,
    flip: float = 0.2,
    seed: int = 0,
):
    """SAM-shaped candidates of one image from its ground-truth instance masks (the module
    docstring's noise model): per box whole, part, over-segment and ``jitter`` jittered variants.
    Returns units int32 [H, W], members int64 [N, W64], scores float32 [N] (IoU with the object)."""
    from boxsup_ext.proposals.sam import _select, image_rng, jittered_boxes

    height, width = image.shape[:2]
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    objects = _instances(dataset_root, split, image_id, boxes.shape[0])
    rng = image_rng(image_id, seed)
    jittered = jittered_boxes(boxes, int(jitter), float(jitter_amount), rng, height, width)  # [M, J, 4]
    masks, scores = [], []
    for m, obj in enumerate(objects):
        radius = int(rng.integers(1, shift + 1)) * int(rng.choice([-1, 1])) if shift > 0 else 0
        made = [shift_boundary(obj, radius), part_mask(obj, rng), over_mask(obj, boxes[m], rng)]
        for rect in core.box_masks(jittered[m], height, width):
            made.append(shift_boundary(obj, int(rng.integers(-shift, shift + 1)) if shift > 0 else 0) & rect)
        for mask in made:
            mask = flip_boundary(mask, flip, rng) if flip > 0 else mask
            union = int((mask | obj).sum())
            masks.append(mask)
            scores.append(int((mask & obj).sum()) / union if union else 0.0)
    stack = np.array(masks, dtype=bool).reshape(-1, height, width)
    if stack.shape[0] == 0:  # an image without boxes
        return (*core.masks_to_units(stack), np.zeros(0, dtype=np.float32))
    stack, kept = _select(stack, np.asarray(scores, dtype=np.float32), max_candidates=stack.shape[0])
    units, members = core.masks_to_units(stack)
    return units, members, kept


def register() -> None:
    """Register ``sam_shaped`` (this script's own method; it reads ground truth, pixels it does not)."""
    from boxsup_ext.proposals import register_method

    register_method(METHOD, sam_shaped, needs_image_id=True, uses_pixels=False, overwrite=True)


# ---------------------------------------------------------------------------------------------
# the stores


def _usable_store(path: Path, method: str, params: dict, dataset):
    """The store at ``path`` opened for ``dataset`` when it is complete and made by ``method`` with
    ``params``; else None. Reads only."""
    from boxsup_ext.proposals import open_store
    from boxsup_ext.proposals.store import MANIFEST, ProposalStore, _json_safe

    if not (path / MANIFEST).is_file():
        return None
    manifest = ProposalStore(path).manifest
    if manifest.get("method") != method or manifest.get("params") != _json_safe(params) or not manifest.get("complete"):
        return None
    try:
        return open_store(path, dataset)  # it refuses a store made for other images
    except InputError:
        return None


def source_stores(sources: Sequence[str], dataset, dataset_root: Path, data_dir: Path, out: Path, noise: dict, workers: int) -> dict:
    """The store of each source: the package's methods' from ``data_dir`` when usable there, else
    made in ``out``; the SAM-shaped ones made (or resumed) in ``out``."""
    from boxsup_ext.demo import DEMO_PROPOSAL_PARAMS
    from boxsup_ext.proposals import generate_proposals
    from boxsup_ext.proposals.synthetic_setup import store_dir

    stores = {}
    for source in sources:
        if source in STORE_SOURCES:
            params = DEMO_PROPOSAL_PARAMS.get(source, {})
            store = _usable_store(store_dir(data_dir, source), source, params, dataset)
            if store is None:
                store = generate_proposals(dataset, source, store_dir(out, source), workers=workers, progress=False, **params)
        else:
            params = dict(noise, **EXACT) if source == "sam_shaped_exact" else dict(noise)
            tag = "j{jitter}a{jitter_amount:g}s{shift}f{flip:g}n{seed}".format(**params)  # a store per noise setting
            params.update(dataset_root=str(dataset_root.resolve()), split="train")
            store = generate_proposals(dataset, METHOD, store_dir(out, f"{source}_{tag}"), workers=1, progress=False, **params)
        stores[source] = store
    return stores


# ---------------------------------------------------------------------------------------------
# the labels of one relabel round


def relabel_settings() -> dict:
    """The recipe's first-round settings (lam 0) with its top-k, and the greedy variant (topk 1)."""
    from boxsup_ext.config import load_config
    from boxsup_ext.demo import DEMO_CONFIG
    from boxsup_ext.relabel import RelabelSettings

    recipe = RelabelSettings.from_config(load_config(DEMO_CONFIG).relabel, "boxsup", epoch=1)
    first = dataclasses.replace(recipe, lam=0.0)
    return {f"top{first.topk}": first, "greedy": dataclasses.replace(first, topk=1)}


def label_quality(dataset, store, settings, model, seed: int = 0) -> dict:
    """One relabel round of every image with ``store``'s candidates: the labels' mIoU against the
    ground truth, the share of ground-truth pixels left as ignore, relabel seconds per image."""
    import torch

    from boxsup_ext.evaluation.metrics import miou_from_confusion
    from boxsup_ext.relabel import RelabelInput, relabel_batch
    from boxsup_ext.training.labels import LabelScore
    from boxsup_ext.training.data import gt_label_map

    score = LabelScore.empty(dataset.num_classes)
    seconds = 0.0
    for first in range(0, len(dataset), RELABEL_BATCH):
        indices = range(first, min(first + RELABEL_BATCH, len(dataset)))
        inputs = []
        for i in indices:
            record, entry = dataset[i], store.get(dataset[i].image_id)
            inputs.append(RelabelInput(record.image_id, dataset.load_image(i), entry.candidates, record.boxes, record.labels))
        start = time.perf_counter()
        results = relabel_batch(model, inputs, settings, seed, 1, torch.device("cpu"))
        seconds += time.perf_counter() - start
        for i, result in zip(indices, results):
            gt = gt_label_map(dataset, i)
            if gt is None:
                raise InputError(f"image {dataset[i].image_id!r} has no ground truth to judge its labels against")
            score.add(result.label, gt)
    return {
        "miou": miou_from_confusion(score.confusion.total)[0],
        "ignore_share": float(score.ignored[0] / score.ignored[1]) if score.ignored[1] else None,
        "seconds_per_image": seconds / max(len(dataset), 1),
    }


def train_source(dataset_root: Path, store_path: Path, run_dir: Path, epochs: int, crop: int, overrides: Sequence[str]) -> dict:
    """BoxSup trained ``epochs`` epochs on one store (the demo config, one thread); its summary."""
    from boxsup_ext.config import load_config
    from boxsup_ext.demo import DEMO_CONFIG
    from boxsup_ext.run_dir import RunDir, read_log
    from boxsup_ext.train import train
    from boxsup_ext.training.state import RunMismatch

    config = load_config(DEMO_CONFIG, list(overrides), assignments={
        "data.train.0.root": str(dataset_root), "data.train.0.proposals": str(store_path), "data.val.root": str(dataset_root),
        "data.crop_size": crop, "train.mode": "boxsup", "train.epochs": epochs, "train.val_every": 0,
        "run.run_dir": str(run_dir), "run.threads": 1, "run.progress": False, "run.tensorboard": False,
    })
    try:
        summary = train(config, resume=(run_dir / "run.json").exists())
    except RunMismatch as err:
        what = f"other settings ({'; '.join(err.differences[:3])})" if err.differences else "other images"
        raise InputError(f"{run_dir} holds a run made with {what}; use another --out, or the same options to continue it") from None
    labelled = [e for e in read_log(RunDir(run_dir).log_file) if e.get("label_miou") is not None]
    return {"epochs": epochs, "val_miou": summary.get("final_val_miou"), "seconds": summary.get("seconds"),
            "last_label_miou": labelled[-1]["label_miou"] if labelled else None}


# ---------------------------------------------------------------------------------------------


def _commit() -> Optional[str]:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def format_table(result: dict) -> str:
    label_keys = list(result["relabel_settings"])
    header = ["source", "cand/img", "gen s/img", "mask ABO", "R@0.5", "R@0.7"]
    header += [f"labels mIoU {k}" for k in label_keys] + [f"ignore {label_keys[0]}", "relabel s/img"]
    train = any("train" in row for row in result["sources"].values())
    if train:
        header += ["labels mIoU last epoch", "val mIoU"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in result["sources"].items():
        cells = [name, f"{row['candidates_per_image']:.1f}", f"{row['seconds_per_image']:.4f}", f"{row['mask']['abo']:.3f}",
                 f"{row['mask']['recall@0.5']:.3f}", f"{row['mask']['recall@0.7']:.3f}"]
        cells += [f"{100 * row['labels'][k]['miou']:.1f}" for k in label_keys]
        ignore = row["labels"][label_keys[0]]["ignore_share"]
        cells += ["-" if ignore is None else f"{100 * ignore:.1f}%", f"{row['labels'][label_keys[0]]['seconds_per_image']:.4f}"]
        if train:
            for key in ("last_label_miou", "val_miou"):
                value = row.get("train", {}).get(key)
                cells.append("-" if value is None else f"{100 * value:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (data, SAM-shaped stores, runs)")
    parser.add_argument("--data", default=None, help="read an existing prepared folder (dataset/, proposals_*/) instead of building OUT/data "
                        "(the dataset options below are then unused)")
    parser.add_argument("--preset", default="hard", help="synthetic preset (default hard)")
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--num-train", type=int, default=160)
    parser.add_argument("--num-val", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0, help="dataset seed")
    parser.add_argument("--sources", default=",".join(SOURCES), help=f"comma-separated, among {', '.join(SOURCES)}")
    parser.add_argument("--jitter", type=int, default=4, help="jittered variants per box (as the sam method's jitter)")
    parser.add_argument("--jitter-amount", type=float, default=0.1, help="jitter's relative shift / log-scale range")
    parser.add_argument("--shift", type=int, default=3, help="largest boundary shift (erosion / dilation), pixels")
    parser.add_argument("--flip", type=float, default=0.2, help="probability of flipping a boundary pixel")
    parser.add_argument("--noise-seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes for Selective Search when a store is made")
    parser.add_argument("--train-epochs", type=int, default=0, help="also train BoxSup N epochs on each store (0: off)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="with --train-epochs: override a trainer config key (repeatable)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return parser


def _checked_sources(args: argparse.Namespace) -> list[str]:
    """The --sources to compare, as a list, once every argument is checked; an :class:`InputError`
    names the first one out of its range."""
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    unknown = [s for s in sources if s not in SOURCES]
    if not sources or unknown:
        raise InputError(f"--sources: unknown or none ({', '.join(unknown) or 'empty'}); choose among {', '.join(SOURCES)}")
    for name, value, least in (("--height", args.height, 8), ("--width", args.width, 8), ("--num-train", args.num_train, 1),
                               ("--num-val", args.num_val, 1), ("--jitter", args.jitter, 0), ("--shift", args.shift, 0),
                               ("--workers", args.workers, 1), ("--train-epochs", args.train_epochs, 0)):
        if value < least:
            raise InputError(f"{name} must be at least {least}, got {value}")
    if not 0.0 <= args.flip <= 1.0:
        raise InputError(f"--flip must be in [0, 1], got {args.flip}")
    if not 0.0 <= args.jitter_amount < 1.0:
        raise InputError(f"--jitter-amount must be in [0, 1), got {args.jitter_amount}")
    if args.data is not None and not (Path(args.data) / "dataset").is_dir():
        raise InputError(f"--data {args.data}: no dataset/ folder in it (the layout prepare_synthetic writes)")
    return sources


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _build_parser().parse_args(argv)
    sources = _checked_sources(args)

    import torch

    from boxsup_ext.data import open_dataset
    from boxsup_ext.demo import DEMO_PROPOSAL_PARAMS
    from boxsup_ext.models import build_model
    from boxsup_ext.proposals.evaluate import evaluate_store
    from boxsup_ext.proposals.synthetic_setup import prepare_synthetic

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    out = ensure_output_dir(args.out, "--out")
    if args.data is None:
        data_dir = out / "data"
        prepare_synthetic(data_dir, args.num_train, args.num_val, seed=args.seed, preset=args.preset, height=args.height,
                          width=args.width, methods=[s for s in sources if s in STORE_SOURCES], workers=args.workers,
                          method_params=DEMO_PROPOSAL_PARAMS)
    else:
        data_dir = Path(args.data)
    dataset_root = data_dir / "dataset"
    dataset = open_dataset(dataset_root, "train", kind="auto")
    if len(dataset) == 0:
        raise InputError(f"{dataset_root}: the train split has no images")
    register()
    noise = {"jitter": args.jitter, "jitter_amount": args.jitter_amount, "shift": args.shift, "flip": args.flip, "seed": args.noise_seed}
    stores = source_stores(sources, dataset, dataset_root, data_dir, out, noise, args.workers)

    settings = relabel_settings()
    torch.manual_seed(0)
    model = build_model("tiny_fcn", dataset.num_classes, width=4).eval()  # lam 0: its logits do not count
    height, width = dataset[0].height, dataset[0].width
    result = {
        "commit": _commit(),
        "dataset": {"root": str(dataset_root), "split": "train", "images": len(dataset), "height": height, "width": width},
        "noise_model": noise,
        "relabel_settings": {name: dataclasses.asdict(s) for name, s in settings.items()},
        "sources": {},
    }
    for source in sources:
        store = stores[source]
        row = evaluate_store(dataset, store)
        row["store"] = str(store.path)
        row["labels"] = {name: label_quality(dataset, store, s, model) for name, s in settings.items()}
        if args.train_epochs:
            row["train"] = train_source(dataset_root, store.path, out / "runs" / f"{store.path.name}_{args.train_epochs}ep", args.train_epochs,
                                        min(height, width), args.overrides)
        result["sources"][source] = row
        print(f"{source}: done", flush=True)
    print(f"{len(dataset)} training images of {dataset_root}, {height} x {width}; noise {noise}")
    print(format_table(result))
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
