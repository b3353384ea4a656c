"""Benchmark of the region proposals and the proposal store (prints; no assertions).

Measures, on one core, at 375 x 500 (VOC size) on images of the built-in synthetic dataset:
  * selective search seconds per image (default settings), wall clock and CPU time (the CPU
    time is the fairer figure on a shared machine), with candidates N and units U;
  * store bytes per image and milliseconds to load one entry, for those same entries (the
    default selective search gives about 2,000 candidates at this size).

    python benchmarks/proposal_bench.py [--images 3] [--json out.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core, as the target is stated

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import cv2

from boxsup_ext.data import open_dataset
from boxsup_ext.data.synthetic import generate as generate_synthetic
from boxsup_ext import core
from boxsup_ext.proposals import get_method
from boxsup_ext.proposals.store import read_entry, write_entry
from boxsup_ext.utils import atomic_write_json, run_cli

def time_call(fn, repeat: int, clock=time.perf_counter) -> tuple[float, object]:
    """Median seconds of ``repeat`` calls of fn() on ``clock`` and the last result."""
    times, result = [], None
    for _ in range(repeat):
        start = clock()
        result = fn()
        times.append(clock() - start)
    return statistics.median(times), result


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3, help="synthetic images to run on (default 3)")
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    method = get_method("selective_search")
    with tempfile.TemporaryDirectory() as tmp:
        root = generate_synthetic(Path(tmp) / "data", num_train=0, num_val=args.images, seed=7, height=args.height, width=args.width)
        dataset = open_dataset(root, "val", kind="auto")
        images = [dataset.load_image(i) for i in range(len(dataset))]
        method(images[0][:64, :64].copy(), None)  # warm-up (imports, allocator)

        rows = []
        for index, image in enumerate(images):
            cpu_start = time.process_time()
            seconds, (units, members, scores) = time_call(lambda: method(image, None), repeat=1)
            cpu_seconds = time.process_time() - cpu_start
            path = Path(tmp) / f"entry_{index}.npz"
            write_entry(path, units, members, scores, seconds)
            load_s, _ = time_call(lambda: read_entry(path), repeat=20)
            rows.append((seconds, core.unit_count(units), members.shape[0], path.stat().st_size, load_s, cpu_seconds))
            print(f"selective_search {image.shape[0]}x{image.shape[1]}: {seconds:.3f} s wall, {cpu_seconds:.3f} s CPU  N={members.shape[0]}  "
                  f"U={core.unit_count(units)}  entry {path.stat().st_size / 1024:.0f} KiB, load {load_s * 1e3:.2f} ms")

    figures = {
        "image_size": [args.height, args.width],
        "images": len(rows),
        "selective_search_s_per_image": statistics.mean(r[0] for r in rows),
        "selective_search_cpu_s_per_image": statistics.mean(r[5] for r in rows),
        "candidates_per_image": statistics.mean(r[2] for r in rows),
        "units_per_image": statistics.mean(r[1] for r in rows),
        "store_bytes_per_image": statistics.mean(r[3] for r in rows),
        "store_load_ms": 1e3 * statistics.mean(r[4] for r in rows),
    }
    print(f"selective search: {figures['selective_search_s_per_image']:.3f} s/image wall "
          f"({figures['selective_search_cpu_s_per_image']:.3f} s CPU) on one core, "
          f"{figures['candidates_per_image']:.0f} candidates over {figures['units_per_image']:.0f} units")
    print(f"store: {figures['store_bytes_per_image'] / 1024:.0f} KiB/image, {figures['store_load_ms']:.2f} ms to load one entry")
    if args.json:
        atomic_write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
