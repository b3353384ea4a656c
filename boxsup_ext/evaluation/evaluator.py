"""Predict label maps for a dataset and score them: mIoU, per-class IoU, pixel accuracy, trimaps.

One pipeline serves ``evaluate`` and ``predict``: image -> normalised tensor -> multi-scale/flip
averaged logits -> softmax -> optional dense CRF -> argmax label map. Images of equal size share
one forward pass; CRF runs in worker processes. Predictions can be written as VOC-palette PNGs
and are reused on a second run with the same settings, so an interrupted evaluation resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import nn

from boxsup_ext.core import IGNORE_LABEL
from boxsup_ext.devices import resolve_device
from boxsup_ext.evaluation.crf import CRFParams, dense_crf_many
from boxsup_ext.evaluation.multiscale import multiscale_logits
from boxsup_ext.evaluation.trimap import trimap_bands
from boxsup_ext.evaluation.metrics import confusion_matrix, miou_from_confusion
from boxsup_ext.models import normalize_images
from boxsup_ext.utils import InputError, OutputManifest, atomic_write_json
from boxsup_ext.utils.outputs import MANIFEST_NAME


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
    """How label maps are predicted.

    ``scales``: input resize factors whose score maps are averaged (``(1.0,)`` = single scale;
    the paper's BoxSup+ uses ``(0.8, 1.0, 1.2)``); ``flip``: also average the mirrored image;
    ``crf``: dense CRF settings, or None for no CRF; ``batch_size``: images per forward pass
    (only images of the same size are batched); ``crf_workers``: processes running the CRF.
    """

    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    crf: Optional[CRFParams] = None
    batch_size: int = 4
    crf_workers: int = 1

    def describe(self) -> dict[str, Any]:
        """The settings that change predictions, as a JSON-ready dict."""
        return {
            "scales": list(self.scales),
            "flip": self.flip,
            "crf": dataclasses.asdict(self.crf) if self.crf is not None else None,
        }


class LabelPredictor:
    """Turns RGB images into label maps with a trained model.

    Args:
        model: segmentation network (float [B, 3, H, W] -> logits [B, C, h, w]); it is moved to
            ``device`` and put in eval mode.
        mean, std: RGB normalisation the model was trained with, in [0, 1] units (the
            checkpoint's ``model_meta["mean"]`` / ``["std"]``).
        settings: scales, flip, CRF, batching.
        device: where the network runs (default: GPU if any).
    """

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        settings: InferenceSettings = InferenceSettings(),
        device: Optional[torch.device | str] = None,
    ) -> None:
        self.device = resolve_device(None if device is None else str(device), "device")
        self.model = model.to(self.device).eval()
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.settings = settings

    def logits(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """The averaged score maps (see :func:`multiscale_logits`) of uint8 [H_i, W_i, 3] RGB
        images: float32 [C, H_i, W_i] per image on the predictor's device, in input order."""
        by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, image in enumerate(images):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise InputError(f"image {index} must be uint8 [H, W, 3] RGB, got {image.dtype} {list(image.shape)}")
            by_size[image.shape[:2]].append(index)
        out: list[torch.Tensor] = [None] * len(images)  # type: ignore[list-item]  # every index is filled below
        step = max(1, self.settings.batch_size)
        for indices in by_size.values():
            for start in range(0, len(indices), step):
                chunk = indices[start : start + step]
                batch = torch.from_numpy(np.stack([images[i] for i in chunk])).to(self.device)
                logits = multiscale_logits(self.model, normalize_images(batch, self.mean, self.std), self.settings.scales, self.settings.flip)
                for i, scores in zip(chunk, logits):
                    out[i] = scores
        return out

    def probabilities(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Softmax of the averaged score maps, before any CRF: float32 [C, H_i, W_i] per uint8
        [H_i, W_i, 3] RGB image, in input order."""
        return [torch.softmax(scores, dim=0).cpu().numpy() for scores in self.logits(images)]

    def labels(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """uint8 [H_i, W_i] label maps, in input order: the argmax of the scores, or of the dense
        CRF's marginals when the settings ask for it."""
        if self.settings.crf is None:  # softmax keeps the order of the scores: argmax them directly
            return [scores.argmax(0).to(torch.uint8).cpu().numpy() for scores in self.logits(images)]
        probs = dense_crf_many(list(images), self.probabilities(images), self.settings.crf, workers=self.settings.crf_workers)
        return [p.argmax(0).astype(np.uint8) for p in probs]


class ConfusionAccumulator:
    """Sums confusion matrices over images: everywhere, and inside/outside trimap bands.

    Args:
        num_classes: C including background.
        trimap_widths: band widths in pixels (see :mod:`boxsup_ext.evaluation.trimap`); empty for
            no trimap analysis.
        ignore: ground-truth label that never counts.
    """

    def __init__(self, num_classes: int, trimap_widths: Sequence[int] = (), ignore: int = IGNORE_LABEL) -> None:
        self.num_classes = num_classes
        self.trimap_widths = tuple(trimap_widths)
        self.ignore = ignore
        self.total = np.zeros((num_classes, num_classes), np.int64)
        self.boundary = np.zeros((len(self.trimap_widths), num_classes, num_classes), np.int64)
        self.interior = np.zeros_like(self.boundary)
        self.num_images = 0

    def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Count one image: ``pred`` and ``gt`` integer [H, W] label maps of the same shape."""
        pred = np.asarray(pred)
        gt = np.asarray(gt)
        if pred.shape != gt.shape:
            raise InputError(f"prediction {list(pred.shape)} and ground truth {list(gt.shape)} differ in size")
        self.total += confusion_matrix(pred, gt, self.num_classes, ignore=self.ignore)
        if self.trimap_widths:
            bands = trimap_bands(gt, self.trimap_widths)
            for k, band in enumerate(bands):
                self.boundary[k] += confusion_matrix(pred, np.where(band, gt, self.ignore), self.num_classes, self.ignore)
                self.interior[k] += confusion_matrix(pred, np.where(band, self.ignore, gt), self.num_classes, self.ignore)
        self.num_images += 1

    def results(self, class_names: Optional[Sequence[str]] = None) -> dict[str, Any]:
        """JSON-ready results. IoUs and accuracy are fractions in [0, 1]; a class absent from
        both prediction and ground truth has IoU ``None`` and does not enter the mean."""
        names = list(class_names) if class_names is not None else [str(c) for c in range(self.num_classes)]
        miou, per_class, pixel_acc = miou_from_confusion(self.total)
        results: dict[str, Any] = {
            "miou": _finite_or_none(miou),
            "pixel_accuracy": _finite_or_none(pixel_acc),
            "num_images": self.num_images,
            "num_pixels": int(self.total.sum()),
            "per_class_iou": {name: _finite_or_none(v) for name, v in zip(names, per_class)},
            "confusion_matrix": self.total.tolist(),
        }
        if self.trimap_widths:
            results["trimap"] = {
                "widths": list(self.trimap_widths),
                "boundary_miou": [_finite_or_none(miou_from_confusion(cm)[0]) for cm in self.boundary],
                "interior_miou": [_finite_or_none(miou_from_confusion(cm)[0]) for cm in self.interior],
                "boundary_pixels": [int(cm.sum()) for cm in self.boundary],
            }
        return results


def _finite_or_none(value: float) -> Optional[float]:
    return float(value) if np.isfinite(value) else None


def _settings_fingerprint(description: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]


def prepare_prediction_dir(pred_dir: Path, description: dict[str, Any], overwrite: bool = False) -> OutputManifest:
    """Make ``pred_dir`` ready for resumable predictions made under ``description``.

    The directory records the checkpoint and settings in ``settings.json`` and, in its
    :class:`OutputManifest`, the hash of every PNG this command wrote there. Its own PNGs are
    reused when the settings record matches and deleted (to be recomputed) when it does not: a
    run's latest.pt is replaced every epoch, and evaluating the run again must not need
    ``--overwrite``. A PNG it did not write (or one of its own that has since been edited) is
    neither a prediction to score nor its own to delete: an :class:`InputError` unless
    ``overwrite``, which deletes it too.

    Returns:
        The manifest to write the predictions through (``evaluate_dataset(outputs=...)``).
    """
    record_path = pred_dir / "settings.json"
    fingerprint = _settings_fingerprint(description)
    outputs = OutputManifest(pred_dir, "boxsup_ext.evaluate", overwrite=overwrite)
    pngs = sorted(p.relative_to(pred_dir).as_posix() for p in pred_dir.rglob("*.png") if not p.is_dir()) if pred_dir.is_dir() else []
    foreign = [name for name in pngs if not outputs.made_by_us(name)]
    if foreign and not overwrite:
        others = f" (and {len(foreign) - 1} other PNGs)" if len(foreign) > 1 else ""
        raise InputError(
            f"{pred_dir} holds {foreign[0]}{others}, which this command did not write (see {MANIFEST_NAME} there), "
            "so it is neither a prediction to score nor one to replace; pass --overwrite to replace them or choose another --out"
        )
    try:
        previous = json.loads(record_path.read_text()).get("fingerprint") if record_path.is_file() else None
    except (OSError, ValueError, AttributeError):
        previous = None
    stale = pngs if previous != fingerprint else foreign
    for name in stale:
        (pred_dir / name).unlink()
        outputs.files.pop(name, None)
    if stale:
        outputs.save()
    pred_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(record_path, {"fingerprint": fingerprint, **description})
    return outputs


def _batched(items: Iterable[int], size: int) -> Iterator[list[int]]:
    batch: list[int] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _chunk_predictions(
    predictor: LabelPredictor, dataset: Any, chunk: list[int], pred_dir: Optional[Path], outputs: Optional[OutputManifest]
) -> tuple[list[tuple[int, np.ndarray, np.ndarray]], int]:
    """Predictions of the images ``chunk`` of ``dataset`` that have a class map, each read back
    from ``pred_dir`` when there, else predicted (all of the chunk at once) and written through
    ``outputs``. Returns (index, predicted uint8 [H, W], ground truth [H, W]) in index order, and
    how many images of the chunk had no class map."""
    from boxsup_ext.data import load_label_png
    from boxsup_ext.data.palette import encode_label_png

    todo: list[tuple[int, np.ndarray]] = []
    done: list[tuple[int, np.ndarray, np.ndarray]] = []
    skipped = 0
    for index in chunk:
        gt = dataset.load_class_map(index)
        if gt is None:
            skipped += 1
            continue
        cached = pred_dir / f"{dataset[index].image_id}.png" if pred_dir is not None else None
        if cached is not None and cached.is_file():
            done.append((index, load_label_png(cached), gt))
        else:
            todo.append((index, gt))
    if todo:
        predictions = predictor.labels([dataset.load_image(index) for index, _ in todo])
        if outputs is not None:
            outputs.write_files({f"{dataset[index].image_id}.png": encode_label_png(pred) for (index, _), pred in zip(todo, predictions)})
        for (index, gt), pred in zip(todo, predictions):
            done.append((index, pred, gt))
    return sorted(done, key=lambda item: item[0]), skipped


def evaluate_dataset(
    predictor: LabelPredictor,
    dataset: Any,
    trimap_widths: Sequence[int] = (),
    pred_dir: Optional[Path] = None,
    progress: bool = True,
    on_image: Optional[Callable[[str, np.ndarray], None]] = None,
    outputs: Optional[OutputManifest] = None,
) -> dict[str, Any]:
    """Predict every image of ``dataset`` that has a class map and score the predictions.

    Args:
        predictor: the model and inference settings.
        dataset: a :class:`boxsup_ext.data.SegmentationDataset` (records with ``image_id``;
            ``load_image``, ``load_class_map``, ``class_names``, ``num_classes``).
        trimap_widths: band widths (pixels) for the boundary/interior analysis; empty for none.
        pred_dir: where to write ``<image_id>.png`` predictions (VOC palette); existing ones are
            read back instead of recomputed. Call :func:`prepare_prediction_dir` on it first.
        progress: show a tqdm progress bar.
        on_image: called with (image_id, predicted uint8 [H, W]) for each scored image.
        outputs: the manifest :func:`prepare_prediction_dir` returned for ``pred_dir``; the PNGs
            are written through it (their hashes recorded first). Default: ``pred_dir``'s.

    Returns:
        The :meth:`ConfusionAccumulator.results` dict plus ``"skipped_without_gt"`` (how many
        images had no class map and were not scored).
    """
    if pred_dir is not None and outputs is None:
        outputs = OutputManifest(pred_dir, "boxsup_ext.evaluate")
    accumulator = ConfusionAccumulator(dataset.num_classes, trimap_widths)
    skipped = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(dataset), desc="evaluate", unit="img")
    chunk_size = max(1, predictor.settings.batch_size) * max(1, predictor.settings.crf_workers)
    for chunk in _batched(range(len(dataset)), chunk_size):
        scorable, without_gt = _chunk_predictions(predictor, dataset, chunk, pred_dir, outputs)
        skipped += without_gt
        for index, pred, gt in scorable:
            accumulator.add(pred, gt)
            if on_image is not None:
                on_image(dataset[index].image_id, pred)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    if outputs is not None:
        outputs.save()
    results = accumulator.results(dataset.class_names)
    results["skipped_without_gt"] = skipped
    return results


def format_results_table(results: dict[str, Any]) -> str:
    """A plain-text table of per-class IoU, mIoU, pixel accuracy and (if present) the trimap rows,
    in percent."""

    def pct(value: Optional[float]) -> str:
        return "   -  " if value is None else f"{100.0 * value:6.2f}"

    names = list(results["per_class_iou"])
    width = max([len(n) for n in names] + [len("pixel accuracy")])
    lines = [f"{'class':<{width}}  IoU (%)", "-" * (width + 9)]
    lines += [f"{name:<{width}}  {pct(iou)}" for name, iou in results["per_class_iou"].items()]
    lines.append("-" * (width + 9))
    lines.append(f"{'mean IoU':<{width}}  {pct(results['miou'])}")
    lines.append(f"{'pixel accuracy':<{width}}  {pct(results['pixel_accuracy'])}")
    lines.append(f"{'images':<{width}}  {results['num_images']:6d}")
    trimap = results.get("trimap")
    if trimap:
        lines.append("")
        lines.append("trimap width (px)  boundary mIoU (%)  interior mIoU (%)")
        for w, b, i in zip(trimap["widths"], trimap["boundary_miou"], trimap["interior_miou"]):
            lines.append(f"{w:>17d}  {pct(b):>17}  {pct(i):>17}")
    return "\n".join(lines)


def add_inference_arguments(parser: Any) -> None:
    """The inference options shared by ``evaluate`` and ``predict`` (argparse)."""
    group = parser.add_argument_group("inference")
    group.add_argument("--scales", default="1.0", help="comma-separated test scales whose scores are averaged (BoxSup+: 0.8,1.0,1.2)")
    group.add_argument("--flip", action="store_true", help="also average the horizontally mirrored image")
    group.add_argument("--crf", action="store_true", help="dense CRF post-processing (DeepLab defaults)")
    group.add_argument(
        "--crf-params",
        default="",
        help="override CRF settings, e.g. bi_w=4,bi_xy_std=121,bi_rgb_std=5,pos_w=3,pos_xy_std=3,iterations=10",
    )
    group.add_argument("--batch-size", type=int, default=4, help="images per forward pass (same-size images only)")
    group.add_argument("--workers", type=int, default=1, help="processes for the dense CRF")
    group.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def settings_from_args(args: Any) -> InferenceSettings:
    """:class:`InferenceSettings` from the options of :func:`add_inference_arguments`."""
    from boxsup_ext.evaluation.multiscale import parse_scales

    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    if args.crf_params and not args.crf:
        raise InputError("--crf-params needs --crf")
    crf = CRFParams.from_string(args.crf_params) if args.crf else None
    return InferenceSettings(
        scales=parse_scales(args.scales), flip=args.flip, crf=crf, batch_size=args.batch_size, crf_workers=args.workers
    )


def load_predictor(
    checkpoint: Path | bytes, settings: InferenceSettings, device: Optional[str] = None, name: Optional[str] = None
) -> tuple[LabelPredictor, dict[str, Any]]:
    """A :class:`LabelPredictor` for a trainer checkpoint, and the checkpoint's ``model_meta``.
    ``device`` is a ``--device`` value (see :func:`boxsup_ext.devices.resolve_device`). ``checkpoint`` may be the
    file's bytes (``name``: the file, for messages), read once to be hashed and loaded."""
    from boxsup_ext.models import IMAGENET_MEAN, IMAGENET_STD, load_model_from_checkpoint

    target = resolve_device(device)
    model, meta = load_model_from_checkpoint(checkpoint, map_location=target, name=name)
    mean = meta.get("mean", IMAGENET_MEAN)
    std = meta.get("std", IMAGENET_STD)
    return LabelPredictor(model, mean, std, settings, target), meta


def open_dataset_arg(root: str | Path, split: str, kind: str) -> Any:
    """``boxsup_ext.data.open_dataset`` with a check that ``root`` exists, for CLI arguments."""
    from boxsup_ext.data import open_dataset

    if not Path(root).exists():
        raise InputError(f"dataset root {root} does not exist; pass --dataset with the dataset directory")
    return open_dataset(root, split, kind=kind)
