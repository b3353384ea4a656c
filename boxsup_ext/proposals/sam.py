"""The ``sam`` method: Segment Anything's masks for box prompts, as BoxSup candidates.

For each image the SAM image encoder runs once; every ground-truth box is then a prompt, together
with ``jitter`` copies of it moved and rescaled a little, and the mask decoder answers all prompts
of the image in one call (or in calls of ``prompt_batch`` prompts). The box itself keeps SAM's
three multimask outputs, each jittered box its best one (highest predicted IoU). Masks are
upsampled to the image size and thresholded at logit 0 as the Hugging Face processor's
``post_process_masks`` does; empty masks and exact repeats are dropped and the rest become the
image's candidates (units + members form, ``core.masks_to_units``) with SAM's predicted IoU as
their scores.

The model is Hugging Face ``transformers``' ``SamModel``, read from a local folder in its
``save_pretrained`` format (``config.json`` + ``model.safetensors``, e.g. a downloaded
``facebook/sam-vit-base`` snapshot); nothing is downloaded. ``transformers`` is the optional extra
``boxsup_ext[sam]`` and is imported only when the method runs. See docs/proposals.md.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from boxsup_ext import core
from boxsup_ext.proposals.registry import register_method
from boxsup_ext.utils import InputError

REQUIREMENT = "transformers>=5.0"  # the extra boxsup_ext[sam], as in pyproject.toml
# SAM's input normalisation (ImageNet mean and std of 0-255 pixels): the same for every released
# SAM checkpoint, and what its preprocessor_config.json holds.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
MASK_THRESHOLD = 0.0  # logits above it are foreground (the processor's post_process_masks default)

_MODELS: dict[tuple[str, str], object] = {}  # (checkpoint folder, device) -> SamModel, loaded once per process


def _sam_model_class():
    try:
        from transformers import SamModel
    except ImportError:
        raise InputError(f"--method sam needs the optional dependency: pip install 'boxsup_ext[sam]' ({REQUIREMENT})") from None
    return SamModel


def load_sam(checkpoint: str, device):
    """The ``SamModel`` in the local folder ``checkpoint`` on ``device``, in eval mode (cached per process).

    A folder that is missing, not a SAM model in the transformers format, or missing weights is an
    InputError naming the path and what is expected.
    """
    model_class = _sam_model_class()
    path = Path(checkpoint).expanduser()
    key = (str(path.resolve()), str(device))
    if key in _MODELS:
        return _MODELS[key]
    expected = (
        "a local folder holding a SAM model in the Hugging Face transformers format (config.json with model_type "
        "'sam' + model.safetensors), e.g. a downloaded facebook/sam-vit-base snapshot"
    )

    def refuse(problem: str):
        return InputError(f"{path}: {problem}; --param checkpoint must be {expected}")

    config_file = path / "config.json"
    if not path.is_dir():
        raise refuse("no such folder")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except FileNotFoundError:
        raise refuse("no config.json in it") from None
    except (OSError, ValueError, AttributeError) as err:
        raise refuse(f"config.json is not readable JSON ({err.__class__.__name__})") from None
    if model_type != "sam":
        raise refuse(f"config.json has model_type {model_type!r}, not 'sam'")
    from transformers.utils import logging as transformers_logging

    bar = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # a bar per tensor loaded would bury generate's own
    try:
        model, info = model_class.from_pretrained(path, local_files_only=True, output_loading_info=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or [err.__class__.__name__])[0]
        raise refuse(f"cannot load it ({first})") from None
    finally:
        if bar:
            transformers_logging.enable_progress_bar()
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise refuse(f"its weights lack {len(missing)} of the model's tensors (e.g. {missing[0]!r})")
    model = model.to(device).eval()
    _MODELS[key] = model
    return model


def jittered_boxes(boxes: np.ndarray, count: int, amount: float, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """``count`` jittered copies of each box, float32 [M, count, 4] (x0, y0, x1, y1).

    Each copy's centre moves by up to ``amount`` times the box's width / height, and its width and
    height are scaled by exp(u), u uniform in [-amount, amount], independently per axis; the
    result is clipped to the image.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 1, 4)
    size = boxes[..., 2:] - boxes[..., :2]
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2 + rng.uniform(-amount, amount, (boxes.shape[0], count, 2)) * size
    half = size * np.exp(rng.uniform(-amount, amount, (boxes.shape[0], count, 2))) / 2
    out = np.concatenate([centre - half, centre + half], axis=-1)
    out[..., 0::2] = out[..., 0::2].clip(0, width)
    out[..., 1::2] = out[..., 1::2].clip(0, height)
    return out.astype(np.float32)


def image_rng(image_id: str, seed: int) -> np.random.Generator:
    """The jitter's random generator of one image: seeded by ``seed`` and the image id, so a store
    does not depend on the order or the process in which its images are made."""
    digest = hashlib.sha256(str(image_id).encode()).digest()
    return np.random.default_rng([int(seed), int.from_bytes(digest[:8], "little")])


def sam(
    image: np.ndarray,
    boxes: np.ndarray,
    *,
    image_id: str,
    checkpoint: str,
    jitter: int = 4,
    jitter_amount: float = 0.1,
    seed: int = 0,
    device: str = "auto",
    prompt_batch: int = 64,
    max_candidates: int = 2000,
):
    """SAM's masks for each box (3) and for ``jitter`` jittered copies of it (the best mask of each).

    image: uint8 [H, W, 3] RGB. boxes: float32 [M, 4] (x0, y0, x1, y1) pixels. image_id: seeds the
    jitter (with ``seed``). checkpoint: local folder of a transformers SamModel. jitter: jittered
    prompts per box (0: the box only). jitter_amount: the jitter's relative shift and log-scale
    range. device: auto, cpu, cuda or cuda:N. prompt_batch: prompts per mask-decoder call (all of
    an image's prompts in one call when there are no more). max_candidates: keep the highest-scoring
    ones when there are more (original order kept). Returns units int32 [H, W], members int64
    [N, W64] and scores float32 [N] (SAM's predicted IoU); N <= M * (3 + jitter).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"sam needs an RGB uint8 image [H, W, 3], got {image.dtype} {image.shape}")
    for name, value, least in (("jitter", jitter, 0), ("prompt_batch", prompt_batch, 1), ("max_candidates", max_candidates, 1)):
        if int(value) < least:
            raise InputError(f"sam option {name} must be at least {least}, got {value}")
    if not 0 <= float(jitter_amount) < 1:
        raise InputError(f"sam option jitter_amount must be in [0, 1), got {jitter_amount}")
    from boxsup_ext.devices import resolve_device  # torch, only when the method runs

    model = load_sam(checkpoint, resolve_device(device, "device"))
    height, width = image.shape[:2]
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if boxes.shape[0] == 0:
        return (*core.masks_to_units(np.zeros((0, height, width), dtype=bool)), np.zeros(0, dtype=np.float32))
    jittered = jittered_boxes(boxes, int(jitter), float(jitter_amount), image_rng(image_id, seed), height, width)
    prompts = np.concatenate([boxes, jittered.reshape(-1, 4)])  # the boxes first, then box m's copies
    masks, scores = _predict(model, image, prompts, num_multimask=boxes.shape[0], prompt_batch=int(prompt_batch))
    masks, scores = _select(masks, scores, int(max_candidates))
    units, members = core.masks_to_units(masks)
    return units, members, scores


def model_input(image: np.ndarray, size: int, device="cpu"):
    """SAM's input float32 [1, 3, size, size] of an RGB uint8 image and the resized (height, width):
    the longest side resized to ``size`` (bilinear), normalised, zero-padded at the bottom and right
    (what the transformers SAM image processor makes)."""
    import torch
    import torch.nn.functional as F

    height, width = image.shape[:2]
    scale = size / max(height, width)
    resized = (int(height * scale + 0.5), int(width * scale + 0.5))
    pixels = torch.from_numpy(np.array(image)).to(device).permute(2, 0, 1)[None].float()
    pixels = F.interpolate(pixels, resized, mode="bilinear", align_corners=False, antialias=True)
    pixels = (pixels - pixels.new_tensor(PIXEL_MEAN).view(1, 3, 1, 1)) / pixels.new_tensor(PIXEL_STD).view(1, 3, 1, 1)
    return F.pad(pixels, (0, size - resized[1], 0, size - resized[0])), resized


def _predict(model, image: np.ndarray, prompts: np.ndarray, num_multimask: int, prompt_batch: int):
    """Masks bool [K, H, W] and predicted IoUs float32 [K]: all 3 outputs of the first
    ``num_multimask`` prompts, then the best output of each other prompt."""
    import torch

    device = next(model.parameters()).device
    size = int(model.config.vision_config.image_size)
    height, width = image.shape[:2]
    with torch.inference_mode():
        pixels, (new_height, new_width) = model_input(image, size, device)
        embeddings = model.get_image_embeddings(pixels)  # once per image, reused by every prompt
        # Box coordinates in the resized image's frame, as the processor maps them.
        factors = np.array([new_width / width, new_height / height] * 2, dtype=np.float32)
        all_masks, all_scores = [], []
        for start in range(0, prompts.shape[0], prompt_batch):
            chunk = torch.from_numpy(prompts[start : start + prompt_batch] * factors).to(device)[None]
            output = model(image_embeddings=embeddings, input_boxes=chunk, multimask_output=True)
            logits, iou = output.pred_masks[0], output.iou_scores[0].float()  # [P, 3, h, w], [P, 3]
            multi = torch.arange(start, start + chunk.shape[1], device=device) < num_multimask  # the boxes themselves
            rows = torch.arange(int((~multi).sum()), device=device)
            best = iou[~multi].argmax(dim=1)  # a jittered box's best output
            chosen = torch.cat([logits[multi].flatten(0, 1), logits[~multi][rows, best]])
            all_scores.append(torch.cat([iou[multi].flatten(), iou[~multi][rows, best]]).cpu().numpy())
            for part in chosen.split(16):  # 16 masks at a time: 64 MB of float32 at 1024 x 1024
                all_masks.append(_binarize(part, size, (new_height, new_width), (height, width)))
    return np.concatenate(all_masks), np.concatenate(all_scores).astype(np.float32)


def _binarize(logits, size: int, resized: tuple[int, int], original: tuple[int, int]) -> np.ndarray:
    """Low-resolution mask logits [K, h, w] to bool [K, H, W] as post_process_masks does: upsampled
    to the padded input size, the padding cropped, upsampled to the image, thresholded."""
    import torch.nn.functional as F

    up = F.interpolate(logits[:, None].float(), (size, size), mode="bilinear", align_corners=False)
    up = F.interpolate(up[..., : resized[0], : resized[1]], original, mode="bilinear", align_corners=False)
    return (up[:, 0] > MASK_THRESHOLD).cpu().numpy()


def _select(masks: np.ndarray, scores: np.ndarray, max_candidates: int):
    """Drop empty masks and exact repeats (the first is kept), then keep the ``max_candidates``
    highest-scoring ones, in their original order."""
    flat = np.packbits(masks.reshape(masks.shape[0], -1), axis=1)
    _, first = np.unique(flat, axis=0, return_index=True)
    keep = np.sort(first)
    keep = keep[masks[keep].reshape(keep.shape[0], -1).any(axis=1)]
    if keep.shape[0] > max_candidates:
        keep = np.sort(keep[np.argsort(-scores[keep], kind="stable")[:max_candidates]])
    return masks[keep], scores[keep]


register_method("sam", sam, needs_image_id=True)
