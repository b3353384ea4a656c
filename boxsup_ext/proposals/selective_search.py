"""Selective Search (Uijlings et al., IJCV 2013) in the units + members form.

Pipeline for one image:

1. Felzenszwalb segmentations for every (colour space, k) pair: one pixel graph per colour space
   (``felzenszwalb.pixel_graph``), segmented at each k (``felzenszwalb.segment_graph``).
2. Units = the common refinement of those segmentations (pixels that share a region in every
   one of them), with slivers under ``min_unit_size`` pixels joined to a neighbour, so each
   base region, and each union of base regions, is a set of units.
3. For every segmentation and every similarity strategy, hierarchical grouping: repeatedly merge
   the most similar pair of adjacent regions (colour + texture + size + fill similarities, or a
   subset), recording every region ever formed as a candidate. A candidate's member bits are the
   OR of its two children's rows (uint64 words), so no per-pixel work happens in the loop.
4. Candidates of all hierarchies are ranked as in the paper (hierarchy position times a random
   factor), duplicates removed, and the first ``max_candidates`` kept.

Colour and texture histograms are accumulated once per unit with ``np.bincount`` and folded up to
regions, so the cost of the grouping loop does not depend on the image size.
"""

from __future__ import annotations

import heapq

import cv2
import numpy as np

from boxsup_ext import core
from boxsup_ext.proposals.felzenszwalb import pixel_graph, segment_graph
from boxsup_ext.proposals.registry import option_items, register_method
from boxsup_ext.utils import InputError

COLOUR_BINS = 25
TEXTURE_BINS = 10
TEXTURE_ORIENTATIONS = 8
COLOUR_SPACES = ("rgb", "hsv", "lab", "gray")
# Letters: c = colour, t = texture, s = size, f = fill.
STRATEGY_LETTERS = frozenset("ctsf")


def convert_colour(image: np.ndarray, space: str) -> np.ndarray:
    """RGB uint8 [H, W, 3] to ``space`` as uint8 [H, W, C], every channel spanning 0..255."""
    if space == "rgb":
        return image
    if space == "hsv":
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV_FULL)  # hue scaled to 0..255
        return hsv
    if space == "lab":
        return cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    if space == "gray":
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[:, :, None]
    raise InputError(f"colour space {space!r} is unknown; use one of {', '.join(COLOUR_SPACES)}")


def _pixel_feature_bins(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel histogram bin ids: colour int64 [P, C] in [0, C*25), texture int64 [P, C*8] in [0, C*80).

    Texture follows the paper: Gaussian derivatives (sigma 1) in 8 orientations per channel,
    each response histogrammed in 10 bins.
    """
    h, w, channels = image.shape
    img = image.astype(np.float32)
    colour = np.minimum((img * (COLOUR_BINS / 256.0)).astype(np.int64), COLOUR_BINS - 1)
    colour = colour.reshape(h * w, channels) + np.arange(channels) * COLOUR_BINS
    smooth = cv2.GaussianBlur(img, (0, 0), 1.0)
    if smooth.ndim == 2:
        smooth = smooth[:, :, None]
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3).reshape(h * w, channels)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3).reshape(h * w, channels)
    angles = np.arange(TEXTURE_ORIENTATIONS // 2) * (2 * np.pi / TEXTURE_ORIENTATIONS)
    # Half-wave oriented responses [P, C, 8]: the derivative along 8 directions, clipped at 0;
    # directions theta and theta + pi are the positive and negative parts of one projection.
    projection = gx[:, :, None] * np.cos(angles).astype(np.float32) + gy[:, :, None] * np.sin(angles).astype(np.float32)
    response = np.concatenate([np.maximum(projection, 0), np.maximum(-projection, 0)], axis=2)
    scale = response.reshape(-1, channels * TEXTURE_ORIENTATIONS).max(axis=0) + 1e-6
    texture = (response.reshape(h * w, -1) / scale * TEXTURE_BINS).astype(np.int64)
    texture = np.minimum(texture, TEXTURE_BINS - 1) + np.arange(channels * TEXTURE_ORIENTATIONS) * TEXTURE_BINS
    return colour, texture


def _unit_histograms(flat_units: np.ndarray, num_units: int, feature_bins: np.ndarray) -> np.ndarray:
    """Unnormalised histograms float64 [U, D] of per-pixel bins [P, k] (values < D) over units."""
    dims = int(feature_bins.max()) + 1 if feature_bins.size else 1
    index = (flat_units[:, None] * dims + feature_bins).ravel()
    return np.bincount(index, minlength=num_units * dims).reshape(num_units, dims).astype(np.float64)


def common_refinement(segmentations: list[np.ndarray], min_unit_size: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Units int32 [H, W] refining every segmentation, and region_of_unit int64 [S, U].

    ``region_of_unit[s, u]`` is the region of segmentation s that holds unit u; regions are
    renumbered densely. The exact refinement of several segmentations is mostly slivers along
    boundaries that the segmentations draw a pixel or two apart (on VOC-sized images over half
    of its units are under 10 pixels). Units under ``min_unit_size`` pixels are therefore joined
    to their larger neighbour with the longest shared border, and take that neighbour's regions:
    base regions move by those few pixels, and U, with it the size of ``members``, drops about 3x.
    """
    shape = segmentations[0].shape
    key = np.zeros(segmentations[0].size, dtype=np.int64)
    for seg in segmentations:
        flat = seg.reshape(-1).astype(np.int64)
        key = key * (int(flat.max()) + 1) + flat
        _, key = np.unique(key, return_inverse=True)
        key = key.reshape(-1)
    if min_unit_size > 1:
        key = _absorb_small_units(key.reshape(shape), int(min_unit_size)).reshape(-1)
    _, first, key = np.unique(key, return_index=True, return_inverse=True)
    flat_units, first_pixel = core.number_in_raster_order(first, key)
    region_of_unit = np.stack(
        [np.unique(seg.reshape(-1)[first_pixel], return_inverse=True)[1].reshape(-1).astype(np.int64) for seg in segmentations]
    )
    return flat_units.astype(np.int32).reshape(shape), region_of_unit


def _absorb_small_units(labels: np.ndarray, min_size: int, rounds: int = 4) -> np.ndarray:
    """Join labels under ``min_size`` pixels to a larger 4-neighbour (longest shared border).

    labels: int64 [H, W] in [0, L). Each small label points at a neighbour that is larger (ties by
    id), so the pointers form a forest, resolved by pointer jumping; a few rounds catch labels
    that grew past no neighbour in the first one. Returns int64 [H, W] (not renumbered).
    """
    for _ in range(rounds):
        num = int(labels.max()) + 1
        area = np.bincount(labels.ravel(), minlength=num)
        small = area < min_size
        if not small.any():
            break
        pairs = np.concatenate([
            np.stack([labels[:, :-1].ravel(), labels[:, 1:].ravel()], 1),
            np.stack([labels[:-1, :].ravel(), labels[1:, :].ravel()], 1),
        ])
        pairs = pairs[pairs[:, 0] != pairs[:, 1]]
        pairs = np.concatenate([pairs, pairs[:, ::-1]])  # both directions: (from, to)
        rank = area * (num + 1) + np.arange(num)  # strict order: larger area, then larger id
        pairs = pairs[small[pairs[:, 0]] & (rank[pairs[:, 1]] > rank[pairs[:, 0]])]
        if pairs.shape[0] == 0:
            break
        border_key, border = np.unique(pairs[:, 0] * num + pairs[:, 1], return_counts=True)
        source, target = border_key // num, border_key % num
        # Per source, the target with the longest border (ties: the larger target).
        order = np.lexsort((rank[target], border, source))
        last = np.r_[source[order][1:] != source[order][:-1], True]
        parent = np.arange(num)
        parent[source[order][last]] = target[order][last]
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
        labels = parent[labels]
    return labels


def adjacent_units(units: np.ndarray) -> np.ndarray:
    """Unique unordered pairs int64 [E, 2] (i < j) of 4-connected neighbouring units."""
    num = core.unit_count(units)
    right = units[:, :-1].astype(np.int64) * num + units[:, 1:]
    down = units[:-1, :].astype(np.int64) * num + units[1:, :]
    keys = np.unique(np.concatenate([right.ravel(), down.ravel()]))
    pairs = np.stack([keys // num, keys % num], axis=1)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    pairs.sort(axis=1)
    return np.unique(pairs, axis=0) if pairs.size else pairs.reshape(0, 2)


def region_adjacency(unit_pairs: np.ndarray, unit_region: np.ndarray) -> np.ndarray:
    """Neighbouring region pairs int64 [E, 2] (i < j) from unit adjacency and the unit->region map."""
    pairs = unit_region[unit_pairs]
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    pairs.sort(axis=1)
    return np.unique(pairs, axis=0) if pairs.size else pairs.reshape(0, 2)


class _RegionTable:
    """The regions of one grouping, base regions first, then one per merge, in rows of arrays
    sized for the 2R - 1 regions a full hierarchy holds: member bits, size, box and (when the
    strategy compares them) the concatenated L1-normalised colour and texture histograms.
    """

    def __init__(
        self, region_rows: np.ndarray, size: np.ndarray, box: np.ndarray, colour: np.ndarray, texture: np.ndarray, strategy: str, image_area: int
    ) -> None:
        num_base = region_rows.shape[0]
        capacity = 2 * num_base - 1
        self.rows = np.zeros((capacity, region_rows.shape[1]), dtype=np.uint64)
        self.rows[:num_base] = region_rows.view(np.uint64)
        self.sizes = np.zeros(capacity, dtype=np.float64)
        self.sizes[:num_base] = size
        self.boxes = np.zeros((capacity, 4), dtype=np.float64)
        self.boxes[:num_base] = box
        use_colour, use_texture = "c" in strategy, "t" in strategy
        self.use_size, self.use_fill = "s" in strategy, "f" in strategy
        # The colour and texture similarities are histogram intersections of L1-normalised
        # histograms; side by side in one matrix, one intersection gives their sum.
        parts = [h / np.maximum(h.sum(1, keepdims=True), 1e-12) for h, used in ((colour, use_colour), (texture, use_texture)) if used]
        self.use_hist = bool(parts)
        self.hist = np.zeros((capacity, sum(p.shape[1] for p in parts)))
        if parts:
            self.hist[:num_base] = np.concatenate(parts, axis=1)
        self.image_area = image_area
        self.count = num_base

    def similarity(self, i: int, others: np.ndarray) -> np.ndarray:
        """The strategy's similarity float64 [K] of region i to each of ``others`` int64 [K]."""
        sizes, boxes = self.sizes, self.boxes
        value = np.minimum(self.hist[i], self.hist[others]).sum(1) if self.use_hist else np.zeros(others.size)
        if self.use_size:
            value += 1.0 - (sizes[i] + sizes[others]) / self.image_area
        if self.use_fill:
            lo = np.minimum(boxes[i, :2], boxes[others, :2])
            hi = np.maximum(boxes[i, 2:], boxes[others, 2:])
            box_area = np.prod(hi - lo, axis=1)
            value += 1.0 - (box_area - sizes[i] - sizes[others]) / self.image_area
        return value

    def merge(self, i: int, j: int) -> int:
        """Add the union of regions i and j as the next row; returns its index."""
        new = self.count
        self.count += 1
        sizes, boxes = self.sizes, self.boxes
        self.rows[new] = self.rows[i] | self.rows[j]
        total = sizes[i] + sizes[j]
        sizes[new] = total
        boxes[new, :2] = np.minimum(boxes[i, :2], boxes[j, :2])
        boxes[new, 2:] = np.maximum(boxes[i, 2:], boxes[j, 2:])
        if self.use_hist:
            self.hist[new] = (self.hist[i] * sizes[i] + self.hist[j] * sizes[j]) / total
        return new


def group_hierarchy(
    region_rows: np.ndarray,
    size: np.ndarray,
    box: np.ndarray,
    colour: np.ndarray,
    texture: np.ndarray,
    adjacency: np.ndarray,
    strategy: str,
    image_area: int,
) -> np.ndarray:
    """Greedy hierarchical grouping of R base regions; returns member rows int64 [2R - 1 or fewer, W64].

    region_rows: int64 [R, W64] member bits of the base regions. size: int64 [R] pixels.
    box: int64 [R, 4] tight boxes (col0, row0, col1, row1). colour, texture: float64 [R, D]
    unnormalised histograms. adjacency: int64 [E, 2] neighbouring region pairs. strategy: letters
    of "ctsf". Row r of the result is region r in order of creation: base regions first, then one
    row per merge (disconnected parts never merge, hence "or fewer").
    """
    num_base = region_rows.shape[0]
    regions = _RegionTable(region_rows, size, box, colour, texture, strategy, image_area)
    capacity = regions.sizes.size
    neighbours: list[set[int]] = [set() for _ in range(capacity)]
    for i, j in adjacency.tolist():
        neighbours[i].add(j)
        neighbours[j].add(i)
    # A max-heap of (similarity, i, j) through negated similarities; merging leaves stale pairs.
    heap: list[tuple[float, int, int]] = []
    for i in range(num_base):
        higher = np.fromiter((j for j in neighbours[i] if j > i), dtype=np.int64)
        if higher.size:
            heap.extend(zip((-regions.similarity(i, higher)).tolist(), [i] * higher.size, higher.tolist()))
    heapq.heapify(heap)
    alive = np.zeros(capacity, dtype=bool)
    alive[:num_base] = True
    while heap:
        _, i, j = heapq.heappop(heap)
        if not (alive[i] and alive[j]):
            continue  # a stale pair: one side was merged already
        new = regions.merge(i, j)
        alive[i] = alive[j] = False
        alive[new] = True
        around = (neighbours[i] | neighbours[j]) - {i, j}
        for other in around:
            neighbours[other].discard(i)
            neighbours[other].discard(j)
            neighbours[other].add(new)
        neighbours[new] = around
        if around:
            others = np.fromiter(around, dtype=np.int64)
            for value, other in zip((-regions.similarity(new, others)).tolist(), others.tolist()):
                heapq.heappush(heap, (value, other, new))
    return regions.rows[: regions.count].view(np.int64)


def _parse_list(value, name: str) -> list:
    items = option_items(value)
    if not items:
        raise InputError(f"selective_search option {name} must not be empty")
    return items


def _parse_options(colour_spaces, ks, strategies) -> tuple[list[str], list[float], list[str]]:
    """The list options of :func:`selective_search` as lists of colour spaces, scales and
    strategies, checked; an :class:`InputError` names the bad one."""
    colour_spaces = [str(v).lower() for v in _parse_list(colour_spaces, "colour_spaces")]
    ks = [float(v) for v in _parse_list(ks, "ks")]
    strategies = [str(v).lower() for v in _parse_list(strategies, "strategies")]
    for strategy in strategies:
        if not strategy or set(strategy) - STRATEGY_LETTERS:
            raise InputError(f"selective_search strategy {strategy!r} must be letters of 'ctsf' (colour, texture, size, fill)")
    return colour_spaces, ks, strategies


def _base_segmentations(
    converted: dict[str, np.ndarray], colour_spaces: list[str], ks: list[float], sigma: float, min_size: int | None
) -> tuple[list[tuple[str, float]], list[np.ndarray]]:
    """Felzenszwalb segmentations int32 [H, W] for every (colour space, k) pair, in that order,
    with the pairs; ``converted`` holds the image in each colour space."""
    settings, segmentations = [], []
    for space in colour_spaces:
        graph = pixel_graph(converted[space], sigma)  # shared by every k of this colour space
        for k in ks:
            settings.append((space, k))
            segmentations.append(segment_graph(graph, k=k, min_size=int(k if min_size is None else min_size)))
    return settings, segmentations


def _unit_colour_texture(
    units: np.ndarray, num_units: int, converted: dict[str, np.ndarray], colour_spaces: list[str]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per colour space, the colour and texture histograms float64 [U, D] of every unit."""
    flat_units = units.reshape(-1).astype(np.int64)
    unit_hist = {}
    for space in colour_spaces:
        colour_bins, texture_bins = _pixel_feature_bins(converted[space])
        unit_hist[space] = (
            _unit_histograms(flat_units, num_units, colour_bins),
            _unit_histograms(flat_units, num_units, texture_bins),
        )
    return unit_hist


def _base_regions(
    unit_region: np.ndarray,
    unit_area: np.ndarray,
    unit_box: np.ndarray,
    colour_units: np.ndarray,
    texture_units: np.ndarray,
    image_size: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One segmentation's base regions as :func:`group_hierarchy` takes them, folded up from its
    units: (member rows, size, box, colour and texture histograms).

    unit_region: int64 [U] the region of each unit; unit_area int64 [U] and unit_box int64 [U, 4]
    from ``core.unit_statistics``; colour_units, texture_units: float64 [U, D] unit histograms.
    image_size: (H, W).
    """
    h, w = image_size
    num_units = unit_region.size
    num_regions = int(unit_region.max()) + 1
    one_hot = np.zeros((num_regions, num_units), dtype=bool)
    one_hot[unit_region, np.arange(num_units)] = True
    region_rows = core.pack_rows(one_hot)
    size = np.bincount(unit_region, weights=unit_area, minlength=num_regions)
    box = np.empty((num_regions, 4), dtype=np.int64)
    box[:, 0], box[:, 1], box[:, 2:] = w, h, 0
    np.minimum.at(box[:, 0], unit_region, unit_box[:, 0])
    np.minimum.at(box[:, 1], unit_region, unit_box[:, 1])
    np.maximum.at(box[:, 2], unit_region, unit_box[:, 2])
    np.maximum.at(box[:, 3], unit_region, unit_box[:, 3])
    colour = np.zeros((num_regions, colour_units.shape[1]))
    texture = np.zeros((num_regions, texture_units.shape[1]))
    np.add.at(colour, unit_region, colour_units)
    np.add.at(texture, unit_region, texture_units)
    return region_rows, size, box, colour, texture


def _rank_candidates(rows: list[np.ndarray], ranks: list[np.ndarray], max_candidates: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidates of all hierarchies in rank order, each kept once at its best rank and at most
    ``max_candidates`` of them: members int64 [N, W64] and scores float32 [N] in (0, 1], falling
    linearly with rank. rows: member rows per hierarchy; ranks: float64 rank keys per hierarchy
    (lower first)."""
    rows = np.concatenate(rows)
    order = np.argsort(np.concatenate(ranks), kind="stable")
    rows = rows[order]
    _, first = np.unique(rows, axis=0, return_index=True)  # duplicates: keep the best-ranked copy
    keep = np.sort(first)[: int(max_candidates)]
    members = np.ascontiguousarray(rows[keep])
    count = members.shape[0]
    scores = (1.0 - np.arange(count, dtype=np.float64) / count).astype(np.float32)
    return members, scores


def selective_search(
    image: np.ndarray,
    boxes: np.ndarray | None = None,
    *,
    max_candidates: int = 2000,
    colour_spaces=("hsv", "lab"),
    ks=(100, 200),
    strategies=("ctsf", "tsf"),
    sigma: float = 0.8,
    min_size: int | None = None,
    min_unit_size: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Selective Search candidates of one image.

    image: uint8 [H, W, 3] RGB. boxes: ignored (the method is box-independent; the argument keeps
    the plug-in signature). max_candidates: keep at most this many. colour_spaces: any of rgb,
    hsv, lab, gray (list or comma-separated string). ks: Felzenszwalb scales (0..255 colour units).
    strategies: similarity sets, each a string of c(olour) t(exture) s(ize) f(ill).
    sigma: smoothing before segmentation, pixels. min_size: smallest base region in pixels
    (default: k). min_unit_size: units (cells of the common refinement) under this many pixels
    join a neighbour (0 keeps the exact refinement; see ``common_refinement``); default 16 at
    375 x 500, scaled with the image area, at least 2. seed: seed of the random factor of the
    ranking.

    Returns units int32 [H, W], members int64 [N, ceil(U / 64)] and scores float32 [N] in (0, 1]
    (1 for the best-ranked candidate, falling linearly with rank).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"selective_search needs an RGB uint8 image [H, W, 3], got {image.dtype} {image.shape}")
    if int(max_candidates) < 1:
        raise InputError(f"max_candidates must be at least 1, got {max_candidates}")
    colour_spaces, ks, strategies = _parse_options(colour_spaces, ks, strategies)
    h, w = image.shape[:2]

    converted = {space: convert_colour(image, space) for space in colour_spaces}
    settings, segmentations = _base_segmentations(converted, colour_spaces, ks, sigma, min_size)
    if min_unit_size is None:
        min_unit_size = max(2, round(16 * h * w / (375 * 500)))
    units, region_of_unit = common_refinement(segmentations, int(min_unit_size))
    num_units = region_of_unit.shape[1]
    unit_area, unit_box = core.unit_statistics(units, num_units)
    unit_pairs = adjacent_units(units)
    unit_hist = _unit_colour_texture(units, num_units, converted, colour_spaces)

    rng = np.random.default_rng(seed)
    all_rows, all_rank = [], []
    for (space, _k), unit_region in zip(settings, region_of_unit):
        regions = _base_regions(unit_region, unit_area, unit_box, *unit_hist[space], (h, w))
        adjacency = region_adjacency(unit_pairs, unit_region)
        for strategy in strategies:
            rows = group_hierarchy(*regions, adjacency, strategy, h * w)
            # Paper's ranking: position from the top of the hierarchy (1 = last merge) times U(0, 1).
            position = np.arange(rows.shape[0], 0, -1, dtype=np.float64)
            all_rows.append(rows)
            all_rank.append(position * rng.random(rows.shape[0]))
    members, scores = _rank_candidates(all_rows, all_rank, max_candidates)
    return units, members, scores


register_method("selective_search", selective_search, uses_boxes=False)
