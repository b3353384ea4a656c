"""The BoxSup relabeling step: choose one candidate segment per ground-truth box, paint, store.

For every box m (class c) and candidate segment n of an image,

    cost[n, m] = (1 - IoU[n, m]) + lam * meanCE[n, m]

with IoU the paper's box IoU between box m and the tight box of candidate n (or, by option, the
pixel IoU of the candidate with the box's rectangle) and meanCE the mean over the candidate's pixels
of -log softmax(logits)[c]. One candidate is drawn uniformly among the ``k`` cheapest (k = 1: the
greedy variant), with a random generator seeded by (seed, epoch, image id) only, so on a CPU the
labels do not depend on batch size, worker count or rank count (on a GPU images of one size share a
bfloat16 forward, see :func:`network_logits`). The chosen segments are painted with their
boxes' classes (larger first, so smaller segments end on top); everything else is background.
A box without any non-empty candidate is marked ignore (255) inside its rectangle rather than
silently becoming background.

The statistics come from the fused op ``boxsup_ext.ops.proposal_costs_batched`` (one call per batch
of images, on the GPU where there is one).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch import nn

from boxsup_ext.config import RELABELED_MODES, RelabelConfig
from boxsup_ext.core import IGNORE_LABEL, Candidates, box_pixel_ranges, unpack_rows  # the torch-free ground floor
from boxsup_ext.models import normalize_images, predict_logits


@dataclass(frozen=True)
class RelabelSettings:
    """``lam``: weight of the mean cross-entropy; ``topk``: sample among this many cheapest
    (1 = greedy); ``iou``: ``"box"`` or ``"mask"``; ``clip_to_box``: paint only inside the box;
    ``min_iou``: candidates whose IoU with a box is below this are not considered for it (0 = all,
    the paper); ``agreement``: a pixel of a box keeps its painted label only where at least this
    share of the box's ``consensus_k`` cheapest candidates agree with it (covers it when painted with
    the box's class, leaves it out when not), else it becomes ignore (0 = off, the paper);
    ``keep_margin``: with the previous round's choice of a box given, it is kept unless the newly
    drawn candidate is cheaper by more than this (None = off, the paper)."""

    # The defaults are the paper's, as RelabelConfig's are (one home for them).
    lam: float = RelabelConfig.lam
    topk: int = RelabelConfig.topk
    iou: str = RelabelConfig.iou
    clip_to_box: bool = RelabelConfig.clip_to_box
    min_iou: float = RelabelConfig.min_iou
    agreement: float = RelabelConfig.agreement
    consensus_k: int = RelabelConfig.topk
    keep_margin: Optional[float] = None

    @classmethod
    def from_config(cls, relabel: Any, mode: str, epoch: int = 1) -> "RelabelSettings":
        """The settings of a trainer config's ``relabel:`` section (a validated ``RelabelConfig``)
        under ``train.mode`` for the relabel of ``epoch`` (1-based): ``boxsup`` samples among
        ``topk``, ``boxsup_greedy`` takes the cheapest, and the fixed baselines (``rectangles``,
        ``grabcut``) take each box's best-matching candidate with the network unused (lam 0, box
        IoU). ``lam`` is ramped by ``relabel.lam_warmup_epochs`` (see :func:`warmed_lam`)."""
        if mode not in RELABELED_MODES:
            return cls(lam=0.0, topk=1, iou="box", clip_to_box=relabel.clip_to_box)
        greedy = mode == "boxsup_greedy" or (relabel.greedy_from_epoch > 0 and epoch >= relabel.greedy_from_epoch)
        lam = warmed_lam(relabel.lam, relabel.lam_warmup_epochs, epoch)
        return cls(
            lam=lam, topk=1 if greedy else relabel.topk, iou=relabel.iou, clip_to_box=relabel.clip_to_box,
            min_iou=relabel.min_iou, agreement=relabel.agreement, consensus_k=relabel.topk,
            keep_margin=relabel.keep_margin if relabel.keep_previous else None,
        )


def warmed_lam(lam: float, warmup_epochs: int, epoch: int) -> float:
    """The cross-entropy weight of epoch ``epoch`` (1-based) under a linear warm-up over
    ``warmup_epochs`` epochs: ``lam * min(1, (epoch - 1) / warmup_epochs)``; ``lam`` itself when
    ``warmup_epochs`` is 0. Epoch 1 (the network is untrained) relabels by IoU alone; epoch
    ``warmup_epochs + 1`` and later use the full ``lam``. A function of the epoch alone, so a resumed
    run relabels with the same weight."""
    if epoch < 1:
        raise ValueError(f"epoch is 1-based, got {epoch}")
    if warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be non-negative, got {warmup_epochs}")
    if warmup_epochs == 0:
        return float(lam)
    return float(lam) * min(1.0, (epoch - 1) / warmup_epochs)


class RelabelInput(NamedTuple):
    """One box-supervised image: ``image`` uint8 [H, W, 3] RGB; ``candidates`` its candidate
    segments (:class:`boxsup_ext.core.Candidates`); ``boxes`` float32 [M, 4] (x0, y0, x1, y1) pixels, half-open;
    ``labels`` int64 [M] in [1, C); ``previous``: int64 [M], the candidate each box took in the
    previous relabel round (-1: none), or None (first round, or ``keep_margin`` off)."""

    image_id: str
    image: np.ndarray
    candidates: Candidates
    boxes: np.ndarray
    labels: np.ndarray
    previous: Optional[np.ndarray] = None


class RelabelResult(NamedTuple):
    """``label`` uint8 [H, W] (0 background, classes, 255 for boxes with no candidate);
    ``chosen`` int64 [M] candidate index per box (-1: none); ``cost``, ``iou``, ``mean_ce``
    float32 [M] of the chosen candidates (NaN where none)."""

    image_id: str
    label: np.ndarray
    chosen: np.ndarray
    cost: np.ndarray
    iou: np.ndarray
    mean_ce: np.ndarray


def image_generator(seed: int, epoch: int, image_id: str) -> torch.Generator:
    """A CPU generator seeded from (seed, epoch, image id) alone (stable across processes)."""
    digest = hashlib.sha256(f"{seed}/{epoch}/{image_id}".encode()).digest()
    generator = torch.Generator()
    generator.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return generator


def assignment_cost(costs: Any, lam: float, iou: str = "box", min_iou: float = 0.0) -> torch.Tensor:
    """cost [N, M] float32 = (1 - IoU) + lam * meanCE from the op's ``ProposalCosts``; +inf for
    empty candidates (their meanCE is +inf) and for IoU below ``min_iou``."""
    overlap = (costs.iou_box if iou == "box" else costs.iou_mask).float()
    mean_ce = costs.mean_ce.float()
    cost = (1.0 - overlap) + lam * mean_ce
    # lam = 0 must still rule out empty candidates: 0 * inf is NaN.
    excluded = torch.isinf(mean_ce) | (overlap < min_iou)
    return torch.where(excluded, torch.full_like(cost, float("inf")), cost)


def cheapest(cost: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` cheapest finite candidates of each box (column of ``cost`` [N, M]): (order int64
    [M, min(k, N)], the candidate indices cheapest first; count int64 [M], how many of them are
    finite). A stable sort ranks equal costs by candidate index, the same on every device."""
    values, order = torch.sort(cost.detach().cpu().t(), dim=1, stable=True)
    values, order = values[:, :k], order[:, :k]
    return order, torch.isfinite(values).sum(dim=1)  # +inf sorts last, so finite ones lead


def draw_among(order: torch.Tensor, counts: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """One candidate per box drawn uniformly among its first ``k`` of ``order`` [M, K >= k] (the
    ranking of :func:`cheapest`, whose ``counts`` [M] finite ones lead); -1 for a box with none."""
    m = order.shape[0]
    chosen = torch.full((m,), -1, dtype=torch.int64)
    draws = torch.randint(0, 1 << 30, (m,), generator=generator)  # one draw per box, always
    for j in range(m):
        count = min(int(counts[j]), k)
        if count:
            chosen[j] = order[j, int(draws[j]) % count]
    return chosen


def keep_previous(cost: torch.Tensor, chosen: torch.Tensor, previous: Optional[np.ndarray], margin: Optional[float]) -> torch.Tensor:
    """``chosen`` int64 [M] with each box's ``previous`` candidate kept unless the new one is cheaper
    than it by more than ``margin`` (``cost`` [N, M]); a previous choice that is now excluded (+inf)
    or out of range is not kept. ``margin`` None or ``previous`` None: ``chosen`` unchanged."""
    if margin is None or previous is None:
        return chosen
    old = torch.as_tensor(np.asarray(previous, dtype=np.int64))
    if old.shape != chosen.shape or cost.shape[0] == 0:
        return chosen  # the image's boxes changed (or it has no candidates): nothing to keep
    columns = torch.arange(chosen.shape[0])
    wide = cost.detach().cpu().double()  # compared in double, as Python floats would be
    old_cost = wide[old.clamp(0, cost.shape[0] - 1), columns]
    new_cost = wide[chosen.clamp(min=0), columns]
    keep = (old >= 0) & (old < cost.shape[0]) & (chosen >= 0) & torch.isfinite(old_cost) & ~(new_cost < old_cost - margin)
    return torch.where(keep, old, chosen)


def consensus_ignore(
    label: np.ndarray, candidates: Candidates, boxes: np.ndarray, labels: np.ndarray,
    order: torch.Tensor, counts: torch.Tensor, agreement: float,
) -> np.ndarray:
    """``label`` uint8 [H, W] with the uncertain pixels of each box set to ignore: inside box m (the
    box pixel rule), the votes of its ``counts[m]`` cheapest candidates (``order`` [M, k]) decide.
    A pixel painted with the box's class needs at least ``agreement`` of the candidates of some box
    of that class holding it to cover it (two boxes of one class may overlap, and the paint keeps one
    of their segments there); any other pixel needs at least ``agreement`` of box m's candidates to
    leave it out. Else it becomes :data:`IGNORE_LABEL`. A box without candidates is left as painted
    (its pixels are ignore already)."""
    if agreement <= 0 or len(boxes) == 0:
        return label
    units, num_units = candidates.units, candidates.num_units
    ranges = box_pixel_ranges(boxes, *label.shape)
    covered: list[Optional[np.ndarray]] = [None] * len(ranges)  # box m's vote share over its rectangle
    best: dict[int, np.ndarray] = {}  # class -> the best vote share of that class's boxes at each pixel
    for m, (col0, row0, col1, row1) in enumerate(ranges):
        count = int(counts[m])
        if count == 0 or col1 <= col0 or row1 <= row0:
            continue
        votes = unpack_rows(candidates.members[order[m, :count].numpy()], num_units).mean(axis=0)  # [U] share covering
        covered[m] = votes[units[row0:row1, col0:col1]]
        share = best.setdefault(int(labels[m]), np.zeros(label.shape))[row0:row1, col0:col1]
        np.maximum(share, covered[m], out=share)
    uncertain = np.zeros(label.shape, dtype=bool)
    for m, (col0, row0, col1, row1) in enumerate(ranges):
        if covered[m] is None:
            continue
        painted = label[row0:row1, col0:col1]
        agree = np.where(painted == labels[m], best[int(labels[m])][row0:row1, col0:col1], 1.0 - covered[m])
        # A small tolerance so that e.g. 4 of 5 meets 0.8 exactly.
        uncertain[row0:row1, col0:col1] |= agree < agreement - 1e-9
    out = label.copy()
    out[uncertain & (label != IGNORE_LABEL)] = IGNORE_LABEL
    return out


def _gather(values: torch.Tensor, chosen: torch.Tensor) -> np.ndarray:
    """values [N, M] at (chosen[m], m) as float32 [M]; NaN where chosen is -1."""
    columns = torch.arange(chosen.shape[0])
    picked = values.detach().cpu().float()[chosen.clamp(min=0), columns] if values.shape[0] else torch.zeros(len(chosen))
    return torch.where(chosen >= 0, picked, torch.full_like(picked, float("nan"))).numpy()


@torch.no_grad()
def network_logits(model: nn.Module, batch: Sequence[RelabelInput], device: torch.device) -> list[torch.Tensor]:
    """Logits float32 [C, H, W] of each image, resized to its units map, in the order of ``batch``.

    On a GPU the images of one size go through the network together, under bfloat16 autocast, and
    are uploaded as uint8 and normalised there. On the CPU every image runs alone in float32, so its
    labels do not depend on which images share its batch (exactly reproducible runs and resumes).
    """
    on_gpu = device.type == "cuda"
    groups: dict = {}
    for index, item in enumerate(batch):
        key = (item.image.shape, item.candidates.units.shape) if on_gpu else index
        groups.setdefault(key, []).append(index)
    out: list = [None] * len(batch)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else contextlib.nullcontext()
    for indices in groups.values():
        pixels = torch.from_numpy(np.stack([np.asarray(batch[i].image, dtype=np.uint8) for i in indices]))
        with autocast:
            logits = predict_logits(model, normalize_images(pixels.to(device)), size=tuple(batch[indices[0]].candidates.units.shape))
        for row, index in enumerate(indices):
            out[index] = logits[row]
    return out


@torch.no_grad()
def relabel_batch(
    model: nn.Module,
    batch: Sequence[RelabelInput],
    settings: RelabelSettings,
    seed: int,
    epoch: int,
    device: torch.device,
) -> list[RelabelResult]:
    """Relabel a batch of images with one fused-op call. ``model`` must be in eval mode.

    The network runs on each full image (no augmentation, see :func:`network_logits`); its logits
    are resized bilinearly to the units map's size before the costs are computed. One cost call and
    one paint call serve the whole batch; the paint reads boxes, labels and the chosen candidates on
    the host, so they need no round trip.
    """
    from boxsup_ext import ops  # the compiled op; a missing build is one clear ImportError

    all_logits = network_logits(model, batch, device)
    op_inputs = []
    for item, logits in zip(batch, all_logits):
        op_inputs.append(
            (
                torch.from_numpy(item.candidates.units).to(device),
                torch.from_numpy(item.candidates.members).to(device),
                logits,
                torch.from_numpy(np.ascontiguousarray(item.boxes, dtype=np.float32)).to(device),
                torch.from_numpy(np.ascontiguousarray(item.labels, dtype=np.int64)).to(device),
            )
        )
    all_costs = ops.proposal_costs_batched(*(list(column) for column in zip(*op_inputs)))
    chosen_all = []
    for item, costs in zip(batch, all_costs):
        cost = assignment_cost(costs, settings.lam, settings.iou, settings.min_iou).cpu()
        # One ranking serves the draw and, with ``agreement``, the vote of the consensus_k cheapest.
        ranked = cheapest(cost, max(settings.topk, settings.consensus_k if settings.agreement > 0 else 0))
        chosen = draw_among(*ranked, settings.topk, image_generator(seed, epoch, item.image_id))
        chosen_all.append((cost, ranked, keep_previous(cost, chosen, item.previous, settings.keep_margin)))
    # One paint call for the batch; boxes, labels and chosen are read on the host.
    label_maps = ops.paint_labels_batched(
        [inputs[0] for inputs in op_inputs],
        [inputs[1] for inputs in op_inputs],
        [chosen for _, _, chosen in chosen_all],
        [torch.from_numpy(np.ascontiguousarray(item.labels, dtype=np.int64)) for item in batch],
        [torch.from_numpy(np.ascontiguousarray(item.boxes, dtype=np.float32)) for item in batch],
        clip=settings.clip_to_box,
        unassigned=IGNORE_LABEL,  # a box without any candidate is ignored, not background
    )
    results = []
    for item, costs, (cost, (order, counts), chosen), label in zip(batch, all_costs, chosen_all, label_maps):
        overlap = costs.iou_box if settings.iou == "box" else costs.iou_mask
        label = label.cpu().numpy()
        if settings.agreement > 0:
            k = settings.consensus_k
            label = consensus_ignore(label, item.candidates, item.boxes, item.labels, order[:, :k], counts.clamp(max=k),
                                     settings.agreement)
        results.append(
            RelabelResult(
                item.image_id,
                label,
                chosen.numpy(),
                _gather(cost, chosen),
                _gather(overlap, chosen),
                _gather(costs.mean_ce, chosen),
            )
        )
    return results

