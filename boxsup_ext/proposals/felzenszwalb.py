"""Felzenszwalb-Huttenlocher graph segmentation, vectorised with NumPy.

The original algorithm visits the edges of the 8-connected pixel graph one by one in order of
weight and joins two components when the edge is no heavier than
``min(Int(C1) + k / |C1|, Int(C2) + k / |C2|)``, where ``Int(C)`` is the heaviest edge of the
component's spanning tree. A Python loop over the ~750,000 edges of a VOC image is far too slow,
so this module runs the same predicate in Boruvka rounds (the scheme of the parallel/GPU versions
of the algorithm) within narrow bands of edge weight: in each round every component takes its lightest edge that passes the
predicate, all those edges are joined at once (pointer jumping), and the band's edges are
contracted. A band needs a few rounds, each a handful of array ops over that band's edges.
Components smaller than ``min_size`` are then joined to their lightest neighbour, as in the
original post-processing.
"""

from __future__ import annotations

import cv2
import numpy as np


def grid_edges(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """8-connected pixel graph of a float image [H, W, C]: (a int64 [E], b int64 [E], w float32 [E]).

    The weight is the Euclidean colour distance between the two pixels; pixel ids are raster order.
    Edges are returned sorted by weight (stable), which the segmentation relies on.
    """
    h, w = image.shape[:2]
    ids = np.arange(h * w, dtype=np.int32).reshape(h, w)
    pieces_a, pieces_b, pieces_w = [], [], []
    # Right, down, down-right and down-left neighbours cover every 8-connected pair once.
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        x_from, x_to = (0, w - dx) if dx >= 0 else (-dx, w)
        src = (slice(0, h - dy), slice(x_from, x_to))
        dst = (slice(dy, h), slice(x_from + dx, x_to + dx))
        diff = image[src] - image[dst]
        pieces_a.append(ids[src].ravel())
        pieces_b.append(ids[dst].ravel())
        pieces_w.append(np.sqrt((diff * diff).sum(axis=-1)).ravel())
    a = np.concatenate(pieces_a)
    b = np.concatenate(pieces_b)
    weight = np.concatenate(pieces_w).astype(np.float32)
    # Sort on weights quantised to 1/16 unit: a 16-bit key takes NumPy's radix sort, several
    # times faster than a float argsort, and ties that fine do not change the segmentation.
    key = np.minimum(np.rint(weight * 16.0), 65535).astype(np.uint16)
    order = np.argsort(key, kind="stable")
    return a[order], b[order], weight[order]


def _boruvka_join(a: np.ndarray, b: np.ndarray, weight: np.ndarray, num_components: int, among: np.ndarray | None = None):
    """Join every component (or those flagged in ``among``) to the other end of its lightest edge.

    Edges (a, b, weight) must be sorted by weight; ties break by position, which makes the
    chosen edges a forest plus 2-cycles (two components picking the same edge), the classic
    Boruvka structure. Roots are found by pointer jumping, all vectorised.
    Returns (number of components after, new_label int64 [num_components], joined component ids
    int64 [K], weight of the edge each of them joined over float32 [K]).
    """
    position = np.arange(a.size, dtype=np.int64)
    first = np.full(num_components, a.size, dtype=np.int64)
    np.minimum.at(first, a, position)
    np.minimum.at(first, b, position)
    picks = first < a.size
    if among is not None:
        picks &= among
    movers = np.flatnonzero(picks)
    edge = first[movers]
    ids = np.arange(num_components, dtype=np.int64)
    parent = ids.copy()
    parent[movers] = np.where(a[edge] == movers, b[edge], a[edge])
    mutual = (parent[parent] == ids) & (parent > ids)  # a 2-cycle: the smaller id becomes the root
    parent[mutual] = ids[mutual]
    while True:
        grand = parent[parent]
        if np.array_equal(grand, parent):
            break
        parent = grand
    is_root = parent == ids
    dense = np.cumsum(is_root, dtype=np.int64) - 1
    return int(is_root.sum()), dense[parent], movers, weight[edge]


def _contract(a: np.ndarray, b: np.ndarray, w: np.ndarray, new_label: np.ndarray):
    """Relabel edge endpoints to merged components and drop the edges now inside one component."""
    a = new_label[a]
    b = new_label[b]
    keep = a != b
    return a[keep], b[keep], w[keep]


def pixel_graph(image: np.ndarray, sigma: float = 0.8):
    """The weighted, weight-sorted 8-connected graph of an image, for :func:`segment_graph`.

    image: uint8 or float array [H, W] or [H, W, C]; sigma: Gaussian pre-smoothing in pixels
    (0 for none). Returns ((H, W), a, b, weight) as from :func:`grid_edges`.
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 2:
        img = img[:, :, None]
    if sigma > 0 and img.size:
        img = cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE)
        if img.ndim == 2:
            img = img[:, :, None]
    return (img.shape[0], img.shape[1]), *grid_edges(img)


def segment(image: np.ndarray, k: float = 100.0, min_size: int = 50, sigma: float = 0.8) -> np.ndarray:
    """Segment an image into regions; returns labels int32 [H, W] numbered 0..R-1 densely.

    image: uint8 or float array [H, W] or [H, W, C] (any colour space; weights are Euclidean
    distances in its units, so k is in the same units, as in the original with 0..255 channels).
    k: scale; larger k gives larger regions. min_size: smallest region in pixels after clean-up.
    sigma: Gaussian pre-smoothing in pixels (0 for none).
    """
    return segment_graph(pixel_graph(image, sigma), k, min_size)


def segment_graph(graph, k: float = 100.0, min_size: int = 50) -> np.ndarray:
    """:func:`segment` on a graph from :func:`pixel_graph` (several k can share one graph)."""
    (h, w), a, b, weight = graph
    if h * w == 0:
        return np.zeros((h, w), dtype=np.int32)
    root = _merge_by_bands(a, b, weight, h * w, k)
    _, label = np.unique(root, return_inverse=True)
    label, num = _absorb_small_components(label, a, b, weight, min_size)
    present = np.zeros(num, dtype=bool)
    present[label] = True
    dense = np.cumsum(present, dtype=np.int64) - 1
    return dense[label].reshape(h, w).astype(np.int32)


def _merge_by_bands(a: np.ndarray, b: np.ndarray, weight: np.ndarray, num_pixels: int, k: float) -> np.ndarray:
    """The predicate pass over the weight-sorted graph (a, b, weight); returns the root int64 [P]
    of every pixel, a component being named by one of its pixels.

    Edges are visited in weight bands (geometric, ratio 1.25), as the original visits them one
    by one: within a band Boruvka rounds join components, and a band's rejected edges are never
    revisited. Bands keep a round from chaining a whole noisy area on heavy edges while every
    component is still small (and so has a generous threshold k / |C|). Each band works on
    local ids of just the components its edges touch.
    """
    # Global state, indexed by pixel id.
    root = np.arange(num_pixels, dtype=np.int64)  # root of every pixel, kept fully compressed
    size = np.ones(num_pixels, dtype=np.int64)
    internal = np.zeros(num_pixels, dtype=np.float32)  # Int(C): heaviest joined edge
    touched = np.zeros(num_pixels, dtype=bool)
    local_id = np.zeros(num_pixels, dtype=np.int64)  # scratch: global root -> id within a band

    limits = np.unique(np.rint(1.25 ** np.arange(0, 40)).astype(np.float32))
    band_ends = np.searchsorted(weight, limits, side="right").tolist() + [weight.size]
    band_start = 0
    for band_end in band_ends:
        if band_end <= band_start:
            continue
        ga, gb, bw = root[a[band_start:band_end]], root[b[band_start:band_end]], weight[band_start:band_end]
        band_start = band_end
        inside = ga != gb
        ga, gb, bw = ga[inside], gb[inside], bw[inside]
        if ga.size == 0:
            continue
        touched[ga] = True
        touched[gb] = True
        nodes = np.flatnonzero(touched)  # global roots in this band, ascending
        touched[nodes] = False
        local_id[nodes] = np.arange(nodes.size)
        num, band_map, local_size, local_internal = _join_band(local_id[ga], local_id[gb], bw, size[nodes], internal[nodes], k)
        if num == nodes.size:
            continue  # nothing joined in this band
        representative = np.empty(num, dtype=np.int64)
        representative[band_map[::-1]] = nodes[::-1]  # the smallest node id of each component
        size[representative] = local_size
        internal[representative] = local_internal
        root[nodes] = representative[band_map]
        root = root[root]  # pixels whose root was just re-rooted point one step further
    return root


def _join_band(a: np.ndarray, b: np.ndarray, weight: np.ndarray, size: np.ndarray, internal: np.ndarray, k: float):
    """Boruvka rounds of the joining predicate over one band's edges, until no edge passes.

    a, b: int64 [E] local ids of the N components the band touches; weight: float32 [E], sorted;
    size: int64 [N] pixels and internal: float32 [N] Int(C) of those components. Returns (number
    of components after, band_map int64 [N]: each component's component after, and the size and
    Int(C) of the components after).
    """
    num = size.size
    band_map = np.arange(num, dtype=np.int64)  # band-start component -> current component
    while a.size:
        threshold = internal + np.float32(k) / size
        passing = weight <= np.minimum(threshold[a], threshold[b])
        if not passing.any():
            break
        a, b, weight = a[passing], b[passing], weight[passing]
        num, new_label, joined, joined_weight = _boruvka_join(a, b, weight, num)
        size = np.bincount(new_label, weights=size, minlength=num).astype(np.int64)
        merged_internal = np.zeros(num, dtype=np.float32)
        np.maximum.at(merged_internal, new_label, internal)
        np.maximum.at(merged_internal, new_label[joined], joined_weight)
        internal = merged_internal
        band_map = new_label[band_map]
        a, b, weight = _contract(a, b, weight, new_label)
    return num, band_map, size, internal


def _absorb_small_components(label: np.ndarray, a: np.ndarray, b: np.ndarray, weight: np.ndarray, min_size: int):
    """Clean-up: join every component under ``min_size`` pixels to the component across its
    lightest edge, in Boruvka rounds until none is left or no small one has a neighbour.

    label: int64 [P] dense component of every pixel; (a, b, weight): the weight-sorted pixel graph.
    Returns (label int64 [P], the number of component ids it may use).
    """
    num = int(label.max()) + 1
    size = np.bincount(label, minlength=num)
    a, b, weight = _contract(a, b, weight, label)
    while a.size:
        small = size < min_size
        touches_small = small[a] | small[b]
        if not touches_small.any():
            break
        num, new_label, joined, _ = _boruvka_join(a[touches_small], b[touches_small], weight[touches_small], num, among=small)
        if joined.size == 0:
            break
        size = np.bincount(new_label, weights=size, minlength=num).astype(np.int64)
        label = new_label[label]
        a, b, weight = _contract(a, b, weight, new_label)
    return label, num
