"""The device check: ``make gpu-check`` (``python benchmarks/gpu_check.py [--device cuda] [--json PATH]``).

One prepared script that proves the op on a GPU in a few minutes and writes a JSON report; it exits
non-zero on any failure. ``--device cpu --quick`` runs the same checks at small sizes on the CPU
(the test suite runs it, so the script cannot rot). Sections:

- parity: random cases (per-pixel and superpixel units, rows wider than 32 words, N 0..50, M 0..8,
  C 1..21, three logit dtypes, int32/int64 units, non-contiguous inputs) against the CPU op; batches
  of 1-12 images mixing sizes, dtypes and images with N = 0, M = 0 or H*W = 0 equal to per-image calls;
- scale: cases that reach every grid-stride loop (a 2048 x 2048 image with 40,000 candidates, a
  per-pixel 500 x 500 image);
- errors: every bad-input error of the CPU suite raised on the device with the same message, and
  device mismatch both ways;
- determinism: two runs equal bit for bit, under torch.use_deterministic_algorithms and on a
  non-default stream; torch.library.opcheck on the device for every op;
- bench: the op with CUDA events (voc, voc-pixels, batched 64 VOC images, batched 16 per-pixel
  images with M = 20), paint_labels, pack_masks [2000, 250k], and the read floor;
- end_to_end: vgg16_largefov training steps with AMP (bf16) and relabel passes on synthetic 321-px
  images: images/s, relabel share, projected hours for 45 epochs of VOC train_aug (10,582 images).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback
from typing import Callable, List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import assign_bench as bench  # noqa: E402
from boxsup_ext import ops  # noqa: E402
from boxsup_ext import reference as ref  # noqa: E402

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
FIELDS = ("area", "bbox", "iou_box", "iou_mask", "mean_ce")


def random_case(g: torch.Generator, height: int, width: int, num_candidates: int, num_boxes: int,
                num_classes: int, dtype: torch.dtype, per_pixel: bool, int32_units: bool,
                num_units: Optional[int] = None) -> list:
    """One image's op arguments on the CPU (empty and whole-image candidates, boxes partly outside)."""
    if per_pixel:
        units = ops.pixel_units(height, width)
        words = ref.num_words(height * width)
    else:
        num_units = num_units or int(torch.randint(1, 3000, (1,), generator=g))
        units = torch.randint(0, num_units, (height, width), generator=g)
        words = ref.num_words(num_units) + int(torch.randint(0, 2, (1,), generator=g))
    if int32_units:
        units = units.to(torch.int32)
    density = torch.rand(num_candidates, 1, generator=g)
    bits = torch.rand(num_candidates, words * 64, generator=g) < density
    if num_candidates > 0:
        bits[0] = False
    if num_candidates > 1:
        bits[1] = True
    members = ref.pack_bits(bits)
    logits = (torch.randn(num_classes, height, width, generator=g) * 4).to(dtype)
    scale = torch.tensor([width, height], dtype=torch.float32)
    centre = torch.rand(num_boxes, 2, generator=g) * scale * 1.4 - 0.2 * scale
    size = torch.rand(num_boxes, 2, generator=g) * scale
    boxes = torch.cat([centre - size / 2, centre + size / 2], 1)
    labels = torch.randint(0, num_classes, (num_boxes,), generator=g)
    return [units, members, logits, boxes, labels]


def scratch_bytes(members: torch.Tensor, boxes: torch.Tensor) -> int:
    """Device scratch of one image on CUDA, the formula of docs/ops.md: 8·((U+1)·S + N·S) + 16·U
    bytes with U = 64·W64 units and S = 1 + 2M columns."""
    units, columns = 64 * members.shape[1], 1 + 2 * boxes.shape[0]
    return 8 * ((units + 1) * columns + members.shape[0] * columns) + 16 * units


def widen(args: list, over_bytes: int) -> list:
    """The same image with zero words appended to its member rows (the results do not change) until
    its scratch exceeds ``over_bytes``, so a budget below that must give it a group of its own."""
    units, members, logits, boxes, labels = args
    extra = 0
    while scratch_bytes(torch.empty(members.shape[0], members.shape[1] + extra), boxes) <= over_bytes:
        extra = 2 * extra + 64
    members = torch.cat([members, torch.zeros(members.shape[0], extra, dtype=members.dtype)], 1)
    return [units, members, logits, boxes, labels]


def non_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values in a transposed-storage (non-contiguous) tensor."""
    if t.dim() < 2 or t.numel() == 0:
        return t
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


def compare(got, want) -> None:
    """Raises unless ``got`` holds the same bits as ``want`` in every field (docs/ops.md: CPU and
    GPU, batched and per-image, give identical results); the message gives the largest differences."""
    for name in FIELDS:
        a, b = getattr(got, name).cpu(), getattr(want, name).cpu()
        if a.shape != b.shape or a.dtype != b.dtype:
            raise AssertionError(f"{name}: {a.dtype} {tuple(a.shape)} vs {b.dtype} {tuple(b.shape)}")
    if all(torch.equal(getattr(got, n).cpu(), getattr(want, n).cpu()) for n in FIELDS):
        return
    diffs = {}
    for name in FIELDS:
        a, b = getattr(got, name).cpu().double(), getattr(want, name).cpu().double()
        same_inf = torch.equal(torch.isinf(a), torch.isinf(b))
        finite = torch.isfinite(b) & torch.isfinite(a)
        diffs[name] = (float((a[finite] - b[finite]).abs().max()) if finite.any() else 0.0) if same_inf else "inf placement"
    raise AssertionError(f"not bit-exact: largest differences {diffs}")


def to(args: list, device: str) -> list:
    return [t.to(device) for t in args]


# ---------------------------------------------------------------------------------------------


def check_parity(device: str, quick: bool) -> dict:
    g = torch.Generator().manual_seed(0)
    count = 30 if quick else 300
    for i in range(count):
        per_pixel = i % 3 == 0
        height = int(torch.randint(1, 24 if per_pixel else 90, (1,), generator=g))
        width = int(torch.randint(1, 24 if per_pixel else 150, (1,), generator=g))
        args = random_case(g, height, width, int(torch.randint(0, 51, (1,), generator=g)),
                           int(torch.randint(0, 9, (1,), generator=g)), int(torch.randint(1, 22, (1,), generator=g)),
                           DTYPES[i % 3], per_pixel, i % 2 == 0)
        if i % 4 == 1:
            args = [non_contiguous(t) for t in args]
        want = ops.proposal_costs(*[t.contiguous() for t in args])  # the CPU op
        compare(ops.proposal_costs(*to(args, device)), want)  # the same bits as the CPU
    batches = 0
    for i in range(4 if quick else 24):
        images = []
        for k in range(int(torch.randint(1, 13, (1,), generator=g))):
            kind = int(torch.randint(0, 6, (1,), generator=g))
            h, w = int(torch.randint(1, 60, (1,), generator=g)), int(torch.randint(1, 90, (1,), generator=g))
            n, m = int(torch.randint(0, 30, (1,), generator=g)), int(torch.randint(0, 6, (1,), generator=g))
            if kind == 0:
                n = 0
            elif kind == 1:
                m = 0
            elif kind == 2:
                h = 0
            images.append(random_case(g, h, w, n, m, int(torch.randint(1, 22, (1,), generator=g)),
                                      DTYPES[(i + k) % 3], kind == 3 and h * w < 4000, k % 2 == 0,
                                      num_units=None if h * w else 1))
        on_device = [to(a, device) for a in images]
        batched = ops.proposal_costs_batched(*[list(column) for column in zip(*on_device)])
        if i % 2:
            with scratch_budget_mb(1):  # split into groups: the same bits
                for got, split in zip(batched, ops.proposal_costs_batched(*[list(c) for c in zip(*on_device)])):
                    compare(split, got)
        for args, got in zip(on_device, batched):
            compare(got, ops.proposal_costs(*args))  # batched == per-image, bit for bit
            compare(got, ops.proposal_costs(*[t.cpu() for t in args]))
            for name in FIELDS:  # every output owns its storage
                t = getattr(got, name)
                if t.numel() and t.untyped_storage().nbytes() != t.numel() * t.element_size():
                    raise AssertionError(f"{name} is a view of a larger buffer")
        batches += 1
    # Painting: one batched call on the device equals the CPU op, with and without clipping.
    painted = 0
    for i in range(4 if quick else 40):
        images = []
        for k in range(int(torch.randint(1, 9, (1,), generator=g))):
            h, w = int(torch.randint(0, 50, (1,), generator=g)), int(torch.randint(1, 90, (1,), generator=g))
            n, m = int(torch.randint(1, 20, (1,), generator=g)), int(torch.randint(0, 8, (1,), generator=g))
            units, members, _, boxes, _ = random_case(g, h, w, n, m, 3, torch.float32, False, k % 2 == 0,
                                                      num_units=None if h * w else 1)
            chosen = torch.randint(-1, n, (m,), generator=g)
            # labels from 0: a region painted background still takes `unassigned` in a box without a candidate
            images.append((units, members, chosen, torch.randint(0, 21, (m,), generator=g), boxes))
        for clip in (False, True):
            want = ops.paint_labels_batched(*[list(c) for c in zip(*images)], clip=clip, unassigned=255)
            on_device = [(a[0].to(device), a[1].to(device)) + tuple(a[2:]) for a in images]  # per-box tables on the host
            got = ops.paint_labels_batched(*[list(c) for c in zip(*on_device)], clip=clip, unassigned=255)
            for a, b, args, host_args in zip(got, want, on_device, images):
                single = ops.paint_labels(*args, clip=clip).cpu()
                if not torch.equal(a.cpu(), b) or not torch.equal(single, ops.paint_labels(*host_args, clip=clip)):
                    raise AssertionError("paint_labels on the device differs from the CPU")
            painted += len(images)
    return {"cases": count, "bit_exact_vs_cpu": count, "batches": batches,
            "painted_images": painted}


def check_scale(device: str, quick: bool) -> dict:
    g = torch.Generator().manual_seed(1)
    out = {}
    sizes = [("large", 256, 256, 2000, 5000), ("per_pixel", 60, 70, 100, None)] if quick else [
        ("large", 2048, 2048, 40000, 20000), ("per_pixel", 500, 500, 400, None)]
    for name, h, w, n, units in sizes:
        args = random_case(g, h, w, n, 4, 21, torch.float32, units is None, False, num_units=units)
        start = time.perf_counter()
        got = ops.proposal_costs(*to(args, device))
        bench.synchronize(device)
        seconds = time.perf_counter() - start
        compare(got, ops.proposal_costs(*args))
        out[name] = {"height": h, "width": w, "candidates": n, "seconds": round(seconds, 4)}
    return out


def error_message(fn: Callable[[], object]) -> str:
    try:
        fn()
    except RuntimeError as err:
        return str(err).splitlines()[0]
    raise AssertionError("no error raised")


@contextlib.contextmanager
def scratch_budget_mb(megabytes: int):
    """Makes the CUDA op split every batch into groups of (about) one image."""
    previous = os.environ.get("BOXSUP_CUDA_SCRATCH_MB")
    os.environ["BOXSUP_CUDA_SCRATCH_MB"] = str(megabytes)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["BOXSUP_CUDA_SCRATCH_MB"]
        else:
            os.environ["BOXSUP_CUDA_SCRATCH_MB"] = previous


def check_errors(device: str) -> dict:
    g = torch.Generator().manual_seed(2)
    good = random_case(g, 8, 9, 4, 2, 3, torch.float32, False, False, num_units=40)
    cases = {
        "units rank": (0, torch.zeros(8, 9, 1, dtype=torch.int64)),
        "units dtype": (0, torch.zeros(8, 9)),
        "members dtype": (1, torch.zeros(4, 2, dtype=torch.int32)),
        "members rank": (1, torch.zeros(4, dtype=torch.int64)),
        "logits dtype": (2, torch.zeros(3, 8, 9, dtype=torch.float64)),
        "logits size": (2, torch.zeros(3, 8, 10)),
        "boxes shape": (3, torch.zeros(2, 5)),
        "boxes dtype": (3, torch.zeros(2, 4, dtype=torch.int64)),
        "boxes NaN": (3, torch.tensor([[0.0, 0.0, 2.0, 2.0], [float("nan"), 0.0, 1.0, 1.0]])),
        "boxes inverted": (3, torch.tensor([[0.0, 0.0, 2.0, 2.0], [3.0, 0.0, 1.0, 1.0]])),
        "labels shape": (4, torch.zeros(3, dtype=torch.int64)),
        "labels range": (4, torch.tensor([0, 3])),
        "labels negative": (4, torch.tensor([-1, 0])),
        "units too wide": (0, torch.full((8, 9), 64 * good[1].shape[1], dtype=torch.int64)),
        "units negative": (0, torch.full((8, 9), -1, dtype=torch.int64)),
        "logits NaN": (2, torch.full((3, 8, 9), float("nan"))),
        "logits inf": (2, torch.full((3, 8, 9), float("inf"))),
    }
    checked = {}
    for name, (index, bad) in cases.items():
        args = list(good)
        args[index] = bad
        cpu = error_message(lambda: ops.proposal_costs(*args))
        dev = error_message(lambda: ops.proposal_costs(*to(args, device)))
        batch = [list(good), args]
        cpu_b = error_message(lambda: ops.proposal_costs_batched(*[list(c) for c in zip(*batch)]))
        dev_b = error_message(lambda: ops.proposal_costs_batched(*[list(c) for c in zip(*[to(a, device) for a in batch])]))
        if cpu != dev or cpu_b != dev_b or "(image 0)" in dev or "(image 1)" not in dev_b:
            raise AssertionError(f"{name}: messages differ: {cpu!r} / {dev!r}; {cpu_b!r} / {dev_b!r}")
        checked[name] = dev
    # A batch split into groups by the scratch budget reports errors in the same order as the CPU:
    # a bad label anywhere before a bad unit in an earlier image. Zero words widen the rows so that
    # each image needs more scratch than the 1 MB budget and runs in a group of its own.
    wide = widen(good, 1 << 20)
    bad_units, bad_labels = list(wide), list(wide)
    bad_units[0] = torch.full((8, 9), -1, dtype=torch.int64)
    bad_labels[4] = torch.tensor([0, 7])
    batch = [bad_units, list(wide), bad_labels]
    cpu = error_message(lambda: ops.proposal_costs_batched(*[list(c) for c in zip(*batch)]))
    with scratch_budget_mb(1):
        dev = error_message(lambda: ops.proposal_costs_batched(*[list(c) for c in zip(*[to(a, device) for a in batch])]))
        if cpu != dev or "labels (image 2)" not in dev:
            raise AssertionError(f"split batch: messages differ: {cpu!r} / {dev!r}")
        checked["split batch order"] = dev
        # ... and, without errors, the same bits as one group and as the CPU
        fine = [to(a, device) for a in (wide, widen(good, 2 << 20), wide)]
        split = ops.proposal_costs_batched(*[list(c) for c in zip(*fine)])
    whole = ops.proposal_costs_batched(*[list(c) for c in zip(*fine)])
    for a, b, args in zip(split, whole, fine):
        compare(a, b)
        compare(a, ops.proposal_costs(*[t.cpu() for t in args]))
    # An image without boxes never reads its logits, NaN or not, also beside one that has boxes.
    nan_image = list(good)
    nan_image[2] = torch.full((3, 8, 9), float("nan"))
    nan_image[3], nan_image[4] = torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)
    ops.proposal_costs_batched(*[list(c) for c in zip(*[to(a, device) for a in (nan_image, good, nan_image)])])
    if device != "cpu":
        for moved in range(5):  # one argument elsewhere, both ways
            for home, away in ((device, "cpu"), ("cpu", device)):
                args = [t.to(away if i == moved else home) for i, t in enumerate(good)]
                message = error_message(lambda: ops.proposal_costs(*args))
                if "must be on one device" not in message:
                    raise AssertionError(f"device mismatch ({moved}, {home}/{away}): {message!r}")
        checked["device mismatch"] = "must be on one device"
    return {"kinds": len(checked), "messages": checked}


def check_determinism(device: str) -> dict:
    g = torch.Generator().manual_seed(3)
    images = [to(random_case(g, 40 + 7 * i, 60 + 5 * i, 30, 3, 21, DTYPES[i % 3], i == 0, False), device)
              for i in range(6)]
    columns = [list(c) for c in zip(*images)]
    first = ops.proposal_costs_batched(*columns)
    second = ops.proposal_costs_batched(*columns)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        third = ops.proposal_costs_batched(*columns)
    finally:
        torch.use_deterministic_algorithms(previous)
    stream_ctx = torch.cuda.stream(torch.cuda.Stream()) if device == "cuda" else contextlib.nullcontext()
    with stream_ctx:
        fourth = ops.proposal_costs_batched(*columns)
        bench.synchronize(device)
    for run in (second, third, fourth):
        for a, b in zip(first, run):
            compare(a, b)
    syncs = None
    if device == "cuda":
        # Count synchronisations of one batched call: warnings from sync debug mode.
        import warnings

        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ops.proposal_costs_batched(*columns)
            syncs = sum("synchroniz" in str(w.message) for w in caught)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    units, members, logits, boxes, labels = images[1]
    torch.library.opcheck(torch.ops.boxsup.proposal_costs.default, (units, members, logits, boxes, labels))
    torch.library.opcheck(torch.ops.boxsup.proposal_costs_batched.default, tuple(columns))
    chosen = torch.tensor([0, -1, 3], device=device)
    torch.library.opcheck(torch.ops.boxsup.paint_labels.default,
                          (units, members, chosen, labels.new_tensor([1, 2, 3]), boxes, True, 255))
    masks = torch.rand(4, 130, device=device) > 0.5
    torch.library.opcheck(torch.ops.boxsup.pack_masks.default, (masks,))
    torch.library.opcheck(torch.ops.boxsup.unpack_masks.default, (ops.pack_masks(masks), 130))
    return {"runs_equal": True, "deterministic_mode": True, "side_stream": device == "cuda",
            "synchronisations_per_batched_call": syncs, "opcheck": ["proposal_costs", "proposal_costs_batched",
                                                                    "paint_labels", "pack_masks", "unpack_masks"]}


def timed_ms(fn: Callable[[], object], device: str, repeats: int) -> float:
    if device != "cuda":
        return bench.time_ms(fn, device, repeats)
    for _ in range(2):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
    return sorted(samples)[len(samples) // 2]


def check_bench(device: str, quick: bool) -> dict:
    repeats = 3 if quick else 20
    out = {}
    for name in ("voc", "voc-pixels"):
        case = bench.make_case(name, device)
        args = [case[k] for k in ("units", "members", "logits", "boxes", "labels")]
        out[name] = {"ms": timed_ms(lambda: ops.proposal_costs(*args), device, repeats),
                     "read_floor_ms": timed_ms(lambda: case["logits"].sum(), device, repeats),
                     "logsumexp_floor_ms": timed_ms(lambda: torch.logsumexp(case["logits"], 0), device, repeats)}
    base = bench.make_case("voc", device)
    batch = 4 if quick else 64
    logits = [torch.randn_like(base["logits"]) for _ in range(batch)]
    columns = ([base["units"]] * batch, [base["members"]] * batch, logits, [base["boxes"]] * batch,
               [base["labels"]] * batch)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    ms = timed_ms(lambda: ops.proposal_costs_batched(*columns), device, repeats)
    floor = timed_ms(lambda: [t.sum() for t in logits], device, repeats)
    out[f"batched-{batch}"] = {"ms": ms, "images_per_s": batch / ms * 1e3, "read_floor_ms": floor,
                               "peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None}
    pix = bench.make_case("voc-pixels", device)
    count = 2 if quick else 16
    g = torch.Generator().manual_seed(5)
    boxes20 = bench.random_boxes(20, g).to(device)
    labels20 = torch.randint(1, 21, (20,), generator=g).to(device)
    columns = ([pix["units"]] * count, [pix["members"]] * count, [torch.randn_like(pix["logits"]) for _ in range(count)],
               [boxes20] * count, [labels20] * count)
    ms = timed_ms(lambda: ops.proposal_costs_batched(*columns), device, max(3, repeats // 4))
    out[f"batched-{count}-pixels-M20"] = {"ms": ms, "images_per_s": count / ms * 1e3}
    chosen = torch.tensor([0, 5, 100])
    out["paint_labels_ms"] = timed_ms(lambda: ops.paint_labels(base["units"], base["members"], chosen,
                                                               torch.tensor([1, 2, 3]), base["boxes"].cpu(),
                                                               unassigned=255), device, repeats)
    masks = torch.rand(200 if quick else 2000, 250_000 // (10 if quick else 1), device=device) > 0.5
    out["pack_masks_ms"] = timed_ms(lambda: ops.pack_masks(masks), device, repeats)
    return out


def check_end_to_end(device: str, quick: bool) -> dict:
    from boxsup_ext.core import Candidates
    from boxsup_ext.models import build_model
    from boxsup_ext.relabel import RelabelInput, RelabelSettings, relabel_batch

    g = torch.Generator().manual_seed(6)
    size = 64 if quick else 321
    name = "tiny_fcn" if quick else "vgg16_largefov"
    model = build_model(name, 21).to(device)
    optimiser = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    batch, steps = (2, 3) if quick else (20, 60)
    images = torch.randn(batch, 3, size, size, device=device)
    targets = torch.randint(0, 21, (batch, size, size), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()
    model.train()

    def train_step():
        with autocast:
            logits = model(images)
            logits = torch.nn.functional.interpolate(logits.float(), size=(size, size), mode="bilinear",
                                                     align_corners=False)
            loss = torch.nn.functional.cross_entropy(logits, targets, ignore_index=255)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    train_step()
    bench.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        train_step()
    bench.synchronize(device)
    train_images_per_s = batch * steps / (time.perf_counter() - start)

    model.eval()
    relabel_images = 8 if quick else 200
    items = []
    for i in range(relabel_images):
        args = random_case(g, size, size, 300 if quick else 2000, 3, 21, torch.float32, False, False, num_units=800)
        image = torch.randint(0, 255, (size, size, 3), dtype=torch.uint8, generator=g).numpy()
        items.append(RelabelInput(f"im{i}", image, Candidates(args[0].numpy(), args[1].numpy()),
                                  args[3].clamp(0, size).numpy(), (args[4].clamp(min=1)).numpy()))
    settings = RelabelSettings(lam=3.0, topk=5)
    relabel_batch(model, items[:2], settings, 0, 0, torch.device(device))
    bench.synchronize(device)
    start = time.perf_counter()
    for k in range(0, relabel_images, 16):
        relabel_batch(model, items[k:k + 16], settings, 0, 1, torch.device(device))
    bench.synchronize(device)
    relabel_seconds = time.perf_counter() - start
    # The forward passes alone, to separate the relabel step's own work (op, sampling, painting).
    from boxsup_ext.models import image_to_tensor, predict_logits

    start = time.perf_counter()
    with torch.no_grad():
        for item in items:
            predict_logits(model, image_to_tensor(item.image).to(device))
    bench.synchronize(device)
    forward_seconds = time.perf_counter() - start
    relabel_images_per_s = relabel_images / relabel_seconds
    epoch_images = 10582
    epoch_seconds = epoch_images / train_images_per_s + epoch_images / relabel_images_per_s
    non_forward = max(0.0, relabel_seconds - forward_seconds) / relabel_images * epoch_images
    return {"model": name, "image_size": size, "train_images_per_s": train_images_per_s,
            "relabel_images_per_s": relabel_images_per_s,
            "relabel_share_of_epoch": (epoch_images / relabel_images_per_s) / epoch_seconds,
            "relabel_non_forward_share_of_epoch": non_forward / epoch_seconds,
            "projected_hours_45_epochs_voc_train_aug": 45 * epoch_seconds / 3600}


SECTIONS = {"parity": check_parity, "scale": check_scale, "errors": check_errors,
            "determinism": check_determinism, "bench": check_bench, "end_to_end": check_end_to_end}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="small sizes (the test suite's CPU variant)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of " + ", ".join(SECTIONS))
    parser.add_argument("--json", metavar="PATH", help="write the report here as JSON")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not (torch.cuda.is_available() and ops.build_info()["cuda_compiled"]):
        print("error: --device cuda needs a visible GPU and the CUDA kernels (FORCE_CUDA=1 pip install "
              "--no-build-isolation -e .); use --device cpu --quick for the CPU variant", file=sys.stderr)
        return 2
    names = [n.strip() for n in args.sections.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        print(f"error: --sections: unknown {unknown}; choose from {list(SECTIONS)}", file=sys.stderr)
        return 2
    report = {"device": args.device, "quick": args.quick, "torch": torch.__version__, "build": ops.build_info(),
              "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None, "sections": {}, "failures": {}}
    started = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        try:
            report["sections"][name] = SECTIONS[name](args.device, args.quick) if name not in ("errors", "determinism") \
                else SECTIONS[name](args.device)
            status = "ok"
        except Exception as err:  # a failed section is reported and the others still run
            report["failures"][name] = "".join(traceback.format_exception_only(type(err), err)).strip()
            traceback.print_exc()
            status = "FAILED"
        print(f"{name}: {status} ({time.perf_counter() - t0:.1f} s)", flush=True)
    report["seconds"] = time.perf_counter() - started
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as handle:
            handle.write(text + "\n")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
