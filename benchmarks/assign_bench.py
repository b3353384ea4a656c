"""Benchmark of the fused proposal-cost op against pure-PyTorch baselines.

    python benchmarks/assign_bench.py [--device cpu|cuda] [--threads 1] [--repeats 15] [--json PATH]

Cases (the performance contract of docs/ops.md, Benchmark figures):
  voc         375 x 500 image, C = 21, N = 2,000 hierarchical candidates over U = 800 superpixels, M = 3
  voc-pixels  the same image with per-pixel units (U = 187,500), N = 2,000 blobby masks
  batched     64 VOC-sized images per call (reported in images per second)

Methods, each timed as the median over repeats after warm-up:
  ext              boxsup_ext.ops.proposal_costs (the fused kernel)
  torch_factored   pure PyTorch: per-unit statistics with index_add, candidates by matmul
  torch_dense      pure PyTorch over dense per-pixel masks [N, H*W] (skipped when it would not fit)
  logsumexp_floor  torch.logsumexp over the logits alone (every pixel's log-sum-exp, the floor)
  read_floor       (cuda only) one full read of the logits (a sum), the memory-bandwidth floor

peak_mb is the peak memory one call adds on top of its inputs: torch.cuda.max_memory_allocated on a
GPU; on the CPU the peak RSS (VmHWM) of a fresh process that loads the inputs and makes the call, minus
its RSS just before the call.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from boxsup_ext import ops  # noqa: E402
from boxsup_ext.reference import box_pixel_masks, pack_bits, unpack_bits  # noqa: E402

HEIGHT, WIDTH, NUM_CLASSES, NUM_CANDIDATES, NUM_UNITS, NUM_BOXES = 375, 500, 21, 2000, 800, 3


# ----------------------------------------------------------------------------------------------
# Inputs


def superpixels(height: int, width: int, num_units: int, generator: torch.Generator) -> torch.Tensor:
    """Voronoi superpixels int64 [H, W] around jittered grid seeds, ids 0..num_units-1."""
    rows = int(round((num_units * height / width) ** 0.5))
    cols = (num_units + rows - 1) // rows
    ys = (torch.arange(rows).repeat_interleave(cols)[:num_units] + torch.rand(num_units, generator=generator)) * (
        height / rows
    )
    xs = (torch.arange(cols).repeat(rows)[:num_units] + torch.rand(num_units, generator=generator)) * (width / cols)
    seeds = torch.stack([ys, xs], dim=1)
    grid = torch.stack(torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij"), -1)
    distances = torch.cdist(grid.reshape(-1, 2).float(), seeds.float())
    return distances.argmin(dim=1).reshape(height, width)


def unit_adjacency(units: torch.Tensor) -> torch.Tensor:
    pairs = torch.cat(
        [
            torch.stack([units[:, :-1].reshape(-1), units[:, 1:].reshape(-1)], 1),
            torch.stack([units[:-1].reshape(-1), units[1:].reshape(-1)], 1),
        ]
    )
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    return torch.unique(torch.sort(pairs, dim=1).values, dim=0)


def hierarchical_candidates(units: torch.Tensor, num_units: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """Bit rows [count, W64] of regions from random agglomerative groupings, as selective search makes."""
    edges = unit_adjacency(units).tolist()
    regions: List[torch.Tensor] = []
    while len(regions) < 3 * count:
        parent = list(range(num_units))
        member = {u: torch.zeros(num_units, dtype=torch.bool) for u in range(num_units)}
        for u in range(num_units):
            member[u][u] = True

        def find(u: int) -> int:
            while parent[u] != u:
                parent[u] = parent[parent[u]]
                u = parent[u]
            return u

        for k in torch.randperm(len(edges), generator=generator).tolist():
            a, b = find(edges[k][0]), find(edges[k][1])
            if a == b:
                continue
            parent[b] = a
            member[a] = member[a] | member.pop(b)
            regions.append(member[a].clone())
    picked = torch.randperm(len(regions), generator=generator)[:count]
    return pack_bits(torch.stack([regions[i] for i in picked.tolist()]))


def blobby_masks(height: int, width: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """bool [count, H, W]: unions of 1-3 random ellipses each."""
    ys = torch.arange(height, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(width, dtype=torch.float32)[None, :] + 0.5
    masks = torch.zeros(count, height, width, dtype=torch.bool)
    for n in range(count):
        for _ in range(int(torch.randint(1, 4, (1,), generator=generator))):
            cy, cx = torch.rand(2, generator=generator) * torch.tensor([height, width])
            ry, rx = 5 + torch.rand(2, generator=generator) * torch.tensor([height / 3, width / 3])
            masks[n] |= ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1
    return masks


def random_boxes(count: int, generator: torch.Generator) -> torch.Tensor:
    x0 = torch.rand(count, generator=generator) * WIDTH * 0.6
    y0 = torch.rand(count, generator=generator) * HEIGHT * 0.6
    w = 30 + torch.rand(count, generator=generator) * WIDTH * 0.4
    h = 30 + torch.rand(count, generator=generator) * HEIGHT * 0.4
    return torch.stack([x0, y0, x0 + w, y0 + h], 1)


def make_case(name: str, device: str, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    if name == "voc":
        units = superpixels(HEIGHT, WIDTH, NUM_UNITS, generator)
        members = hierarchical_candidates(units, NUM_UNITS, NUM_CANDIDATES, generator)
    elif name == "voc-pixels":
        units = ops.pixel_units(HEIGHT, WIDTH)
        members = ops.pack_masks(blobby_masks(HEIGHT, WIDTH, NUM_CANDIDATES, generator))
    else:
        raise ValueError(name)
    logits = torch.randn(NUM_CLASSES, HEIGHT, WIDTH, generator=generator) * 2
    boxes = random_boxes(NUM_BOXES, generator)
    labels = torch.randint(1, NUM_CLASSES, (NUM_BOXES,), generator=generator)
    return {
        "units": units.to(device),
        "members": members.to(device),
        "logits": logits.to(device),
        "boxes": boxes.to(device),
        "labels": labels.to(device),
    }


# ----------------------------------------------------------------------------------------------
# Pure-PyTorch baselines (float32, as a user would write them)


def unit_statistics(units, logits, boxes, labels, num_units):
    """Per-unit pixel count, tight-box corners, in-box counts and CE sums, with index_add."""
    h, w = units.shape
    flat = units.reshape(-1)
    nll = torch.logsumexp(logits, dim=0).reshape(-1)[None] - logits[labels].reshape(len(labels), -1)  # [M, HW]
    count = torch.zeros(num_units, device=units.device).index_add_(0, flat, torch.ones_like(flat, dtype=torch.float))
    ce = torch.zeros(num_units, len(labels), device=units.device).index_add_(0, flat, nll.t())
    rect = box_pixel_masks(boxes, h, w).reshape(len(boxes), h * w).to(units.device).float()
    inbox = torch.zeros(num_units, len(labels), device=units.device).index_add_(0, flat, rect.t())
    ys = torch.arange(h, device=units.device).repeat_interleave(w).float()
    xs = torch.arange(w, device=units.device).repeat(h).float()
    big = float(h + w)
    corners = []
    for values, reduce, fill in ((xs, "amin", big), (ys, "amin", big), (xs, "amax", -1.0), (ys, "amax", -1.0)):
        corners.append(torch.full((num_units,), fill, device=units.device).scatter_reduce(0, flat, values, reduce))
    return count, ce, inbox, torch.stack(corners, 1), rect.sum(1)


def finish(area, inter, ce_sum, corner_min, corner_max, boxes, rect_pixels):
    nonempty = area > 0
    bbox = torch.cat([corner_min, corner_max + 1], 1) * nonempty[:, None]
    box_area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    bbox_area = (bbox[:, 2] - bbox[:, 0]) * (bbox[:, 3] - bbox[:, 1])
    iw = (torch.minimum(bbox[:, None, 2], boxes[None, :, 2]) - torch.maximum(bbox[:, None, 0], boxes[None, :, 0])).clamp(min=0)
    ih = (torch.minimum(bbox[:, None, 3], boxes[None, :, 3]) - torch.maximum(bbox[:, None, 1], boxes[None, :, 1])).clamp(min=0)
    box_inter = iw * ih
    iou_box = box_inter / (bbox_area[:, None] + box_area[None] - box_inter).clamp(min=1e-9)
    iou_mask = inter / (area[:, None] + rect_pixels[None] - inter).clamp(min=1e-9)
    mean_ce = torch.where(nonempty[:, None], ce_sum / area[:, None].clamp(min=1), torch.full_like(ce_sum, float("inf")))
    return area, bbox, iou_box, iou_mask, mean_ce


def torch_factored(units, members, logits, boxes, labels):
    num_units = members.shape[1] * 64
    count, ce, inbox, corners, rect_pixels = unit_statistics(units, logits.float(), boxes, labels, num_units)
    in_candidate = unpack_bits(members, num_units)  # [N, U] bool
    weights = in_candidate.float()
    area = weights @ count
    big = float(sum(units.shape))
    corner_min = torch.stack(
        [torch.where(in_candidate, corners[None, :, k], big).amin(1) for k in (0, 1)], 1
    )
    corner_max = torch.stack(
        [torch.where(in_candidate, corners[None, :, k], -1.0).amax(1) for k in (2, 3)], 1
    )
    return finish(area, weights @ inbox, weights @ ce, corner_min, corner_max, boxes, rect_pixels)


def torch_dense(units, members, logits, boxes, labels):
    h, w = units.shape
    masks = unpack_bits(members, members.shape[1] * 64)[:, units.reshape(-1)]  # [N, HW] bool
    weights = masks.float()
    nll = torch.logsumexp(logits.float(), 0).reshape(-1)[None] - logits[labels].float().reshape(len(labels), -1)
    rect = box_pixel_masks(boxes, h, w).reshape(len(boxes), h * w).to(units.device).float()
    area = weights.sum(1)
    ys = torch.arange(h, device=units.device).repeat_interleave(w).float()
    xs = torch.arange(w, device=units.device).repeat(h).float()
    big = float(h + w)
    corner_min = torch.stack([torch.where(masks, v, big).amin(1) for v in (xs, ys)], 1)
    corner_max = torch.stack([torch.where(masks, v, -1.0).amax(1) for v in (xs, ys)], 1)
    return finish(area, weights @ rect.t(), weights @ nll.t(), corner_min, corner_max, boxes, rect.sum(1))


def ext(units, members, logits, boxes, labels):
    return ops.proposal_costs(units, members, logits, boxes, labels)


def logsumexp_floor(units, members, logits, boxes, labels):
    return torch.logsumexp(logits, dim=0)


def read_floor(units, members, logits, boxes, labels):
    return logits.sum()


# ----------------------------------------------------------------------------------------------
# Timing and memory


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object], device: str, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


METHODS: Dict[str, Callable] = {}


def peak_mb(method: str, case: dict, device: str) -> Optional[float]:
    """Peak memory one call of ``method`` adds on top of its inputs, in MiB.

    On a GPU: torch.cuda.max_memory_allocated. On the CPU: the call runs in a fresh process (so
    no warmed-up heap hides its allocations) that loads the inputs, then reports its peak RSS
    (VmHWM) minus the RSS it had just before the call.
    """
    fn = METHODS[method]
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn(**case)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    if not os.path.exists("/proc/self/statm"):
        return None
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "case.pt")
        torch.save(case, path)
        result = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--peak-child", path, method,
             "--threads", str(torch.get_num_threads())],
            capture_output=True, text=True,
        )
    if result.returncode != 0:
        raise RuntimeError(f"peak-memory child for {method} failed: {result.stderr[-500:]}")
    return float(result.stdout.strip().splitlines()[-1])


def peak_child(path: str, method: str) -> None:
    case = torch.load(path)
    before = rss_mb()
    METHODS[method](**case)
    # VmHWM is this process image's own peak RSS (ru_maxrss would carry the parent's over exec).
    with open("/proc/self/status") as handle:
        peak = next(int(line.split()[1]) for line in handle if line.startswith("VmHWM:")) / 1024
    print(max(0.0, peak - before))


def dense_bytes(case: dict) -> int:
    n = case["members"].shape[0]
    h, w = case["units"].shape
    return n * h * w * (1 + 4 + 4 + 1)  # bool masks, float weights, one where() temporary


def free_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 40


def run_case(name: str, device: str, repeats: int) -> dict:
    case = make_case(name, device)
    methods = ["ext", "torch_factored", "torch_dense", "logsumexp_floor"] + (["read_floor"] if device == "cuda" else [])
    result = {"name": name, "ms": {}, "peak_mb": {}, "skipped": {},
              "units": int(case["units"].max()) + 1, "candidates": int(case["members"].shape[0])}
    for method in methods:
        fn = METHODS[method]
        if method == "torch_dense" and dense_bytes(case) > 0.6 * free_bytes(device):
            result["skipped"][method] = f"needs ~{dense_bytes(case) / 2**30:.1f} GiB, more than 60% of free memory"
            continue
        call = lambda fn=fn: fn(**case)  # noqa: E731
        reps = max(3, repeats // 5) if method == "torch_dense" else repeats
        result["ms"][method] = time_ms(call, device, reps, warmup=1 if method == "torch_dense" else 2)
        result["peak_mb"][method] = peak_mb(method, case, device)
    return result


def run_batched(device: str, repeats: int, batch: int = 64) -> dict:
    base = make_case("voc", device)
    generator = torch.Generator().manual_seed(1)
    distinct_logits = [
        (torch.randn(NUM_CLASSES, HEIGHT, WIDTH, generator=generator) * 2).to(device) for _ in range(8)
    ]
    args = (
        [base["units"]] * batch,
        [base["members"]] * batch,
        [distinct_logits[i % len(distinct_logits)] for i in range(batch)],
        [base["boxes"]] * batch,
        [base["labels"]] * batch,
    )
    ms = time_ms(lambda: ops.proposal_costs_batched(*args), device, max(3, repeats // 3), warmup=1)
    return {"name": f"batched-{batch}", "ms": {"ext": ms}, "images_per_s": batch / (ms / 1e3), "batch": batch}


METHODS.update(ext=ext, torch_factored=torch_factored, torch_dense=torch_dense, logsumexp_floor=logsumexp_floor,
               read_floor=read_floor)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peak-child", nargs=2, metavar=("CASE", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch and the kernels (default 1)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--cases", default="voc,voc-pixels,batched")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    if args.device == "cuda" and not ops.build_info()["cuda_compiled"]:
        print("error: --device cuda but boxsup_ext was built without CUDA kernels (FORCE_CUDA=1)", file=sys.stderr)
        return 2
    if args.threads < 1:
        print("error: --threads must be >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    if args.peak_child:
        peak_child(*args.peak_child)
        return 0
    cases = []
    for name in [c.strip() for c in args.cases.split(",") if c.strip()]:
        if name == "batched":
            cases.append(run_batched(args.device, args.repeats))
        elif name in ("voc", "voc-pixels"):
            cases.append(run_case(name, args.device, args.repeats))
        else:
            print(f"error: --cases: unknown case {name!r} (voc, voc-pixels, batched)", file=sys.stderr)
            return 2
    report = {"device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
              "threads": args.threads, "torch": torch.__version__, "cases": cases}
    print_table(report)
    if args.json:
        from boxsup_ext.utils import atomic_write_json

        atomic_write_json(args.json, report)
    return 0


def print_table(report: dict) -> None:
    print(f"device={report['device']} threads={report['threads']} torch={report['torch']}")
    print(f"{'case':<12} {'method':<16} {'ms':>10} {'peak MB':>9}  note")
    for case in report["cases"]:
        for method, ms in case["ms"].items():
            peak = case.get("peak_mb", {}).get(method)
            note = ""
            if method == "ext" and "logsumexp_floor" in case["ms"]:
                floor = case["ms"]["logsumexp_floor"]
                note = f"{ms / floor:.2f}x floor"
                for other in ("torch_factored", "torch_dense"):
                    if other in case["ms"]:
                        note += f", {case['ms'][other] / ms:.1f}x faster than {other}"
            if "images_per_s" in case:
                note = f"{case['images_per_s']:.1f} images/s"
            peak_text = f"{peak:9.1f}" if peak is not None else f"{'-':>9}"
            print(f"{case['name']:<12} {method:<16} {ms:10.2f} {peak_text}  {note}")
        for method, why in case.get("skipped", {}).items():
            print(f"{case['name']:<12} {method:<16} {'skipped':>10} {'':>9}  {why}")


if __name__ == "__main__":
    sys.exit(main())
