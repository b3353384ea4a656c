#!/usr/bin/env python
"""The paper's comparisons on the built-in synthetic dataset, over seeds, as Markdown + JSON.

    python benchmarks/reproduce.py [--quick] [--seeds K] [--out DIR] [--workers N] [--recipes]

Runs ``tiny_fcn`` with the shipped synthetic recipe (``configs/synthetic_boxsup.yaml``) through the
package's own trainer (``boxsup_ext.train.train``), evaluator (``boxsup_ext.evaluate``) and figures
(``boxsup_ext.figures``):

- Table 1, supervision: ``mask`` (all images), ``box`` (BoxSup, all images), ``semi`` (masks for
  the first 1/7 of the images, boxes for the rest);
- Table 2, estimated masks: ``rectangles``, ``grabcut``, ``boxsup_greedy`` (k = 1), ``boxsup`` (k = 5);
- Table 3, more boxes beat fewer masks: ``mask`` on the small masked set against ``semi`` (that set
  plus the box-only images), at equal numbers of SGD steps; mIoU against the number of masked
  images and against the number of box-only images added (``table3.png``);
- Figure 4 (trimap bands, ``evaluate --trimap``) on the Table 1/2 runs, Figure 3 (mask evolution)
  from the ``boxsup`` run of the first seed, and the training curves.

Every row is a mean ± sample standard deviation over the seeds; the seed changes only training
(initialisation, augmentation, sampling order, top-k draws): the dataset and its proposal stores
are built once and shared by every run and seed. Rows report validation mIoU of the final model
and, where labels are estimated, the mIoU of the training labels of the last epoch against the
training images' ground truth (ignore pixels left out).

``--quick`` runs 3 seeds (the full run 5) and 3 points per Table 3 curve (the full run 5-6), with
the same data and schedule (20 epochs of 160 images of 64 px); about 17 minutes with ``--threads 1``
on the 2-core development machine. ``--workers N`` runs N trainings at once as subprocesses.

``--recipes`` runs the recipe study instead (lam, min_iou, clip-to-box and lam warm-up, at 64 px and
at 160 px with Selective Search at its defaults) and writes ``recipes.md`` / ``recipes.json``.

Outputs go to ``--out`` (default ``runs/reproduce``): ``tables.md``, ``results.json``,
``figures/*.png``, one run directory per (row, seed) under ``runs/``. A rerun into the same folder
reuses every finished run and evaluation (an interrupted run is resumed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from boxsup_ext.utils import InputError, atomic_write_bytes, atomic_write_json  # noqa: E402

BASE_CONFIG = REPO / "configs" / "synthetic_boxsup.yaml"
BATCH = 4  # the shipped synthetic batch size
# Selective Search scaled to 64 px images (as the demo): its defaults are sized for VOC.
SS_64 = {"ks": [25, 50, 100], "min_size": 10, "colour_spaces": ["hsv", "lab", "rgb"]}


@dataclass(frozen=True)
class Scale:
    """What a mode runs: data size, schedule, seeds and the Table 3 curve points."""

    name: str
    num_train: int
    num_val: int
    size: int
    epochs: int
    lr_step: int
    seeds: int
    masked_curve: tuple  # numbers of masked images (mask mode, equal steps)
    boxes_curve: tuple  # numbers of box-only images added to the small masked set (semi, equal steps)
    snapshots: tuple
    trimap: str = "1,2,4,8"
    extra: tuple = ()  # config overrides of every run
    trimap_rows: tuple = ("mask", "boxsup", "semi", "rectangles", "grabcut", "boxsup_greedy")
    # recipe study
    recipe_seeds: int = 2
    recipe_big: Optional[dict] = None


SCALES = {
    "full": Scale("full", 160, 60, 64, 20, 15, 5, (6, 12, 23, 46, 92, 160), (0, 23, 46, 92, 137), (1, 2, 5, 10, 20),
                  recipe_seeds=5, recipe_big={"size": 160, "num_train": 160, "num_val": 60, "epochs": 30, "lr_step": 22, "seeds": 3}),
    "quick": Scale("quick", 160, 60, 64, 20, 15, 3, (23, 46, 160), (0, 46, 137), (1, 2, 5, 10, 20),
                   recipe_seeds=3, recipe_big={"size": 160, "num_train": 96, "num_val": 24, "epochs": 30, "lr_step": 22, "seeds": 3}),
    # the test suite's: seconds, not meaningful numbers
    "smoke": Scale("smoke", 8, 4, 32, 1, 1, 1, (8,), (0, 3), (1,), trimap="1,2", extra=("model.width=4",), trimap_rows=("mask", "boxsup"),
                   recipe_seeds=1, recipe_big={"size": 48, "num_train": 6, "num_val": 4, "epochs": 1, "lr_step": 1, "seeds": 1}),
}


@dataclass(frozen=True)
class RunSpec:
    """One training run: a table row at one seed."""

    row: str  # the row's key, also its run folder
    mode: str  # trainer mode
    seed: int
    n_mask: int  # images 0..n_mask-1 keep their masks
    n_box: int  # the next n_box images are box-supervised
    epochs: int
    lr_step: int
    data: str = "64"  # which prepared dataset
    overrides: tuple = ()
    snapshots: tuple = ()
    trimap: bool = False
    trimap_widths: str = "1,2,4,8"  # evaluate --trimap, when ``trimap``

    @property
    def name(self) -> str:
        return f"{self.row}/seed{self.seed}"


# --------------------------------------------------------------------------------------------
# data


@dataclass
class Data:
    dataset: Path
    stores: dict
    ids: list
    size: int  # the training crop's side (the image side for square images)
    folder: Path


def prepare_data(
    folder: Path, scale_num_train: int, num_val: int, size: int, methods: Sequence[str], params: dict, workers: int,
    preset: str = "easy", height: Optional[int] = None, width: Optional[int] = None,
) -> Data:
    """The synthetic dataset of ``preset`` (``size`` px square, or ``height`` x ``width``) and its
    proposal stores in ``folder``, reused when there; ``size`` is also the training crop."""
    from boxsup_ext.data import open_dataset
    from boxsup_ext.proposals.synthetic_setup import prepare_synthetic

    setup = prepare_synthetic(folder, scale_num_train, num_val, size=size, seed=0, methods=methods, workers=workers, method_params=params,
                              preset=preset, height=height, width=width)
    train = open_dataset(setup.dataset, "train", kind="synthetic")
    ids = [record.image_id for record in train.records]
    return Data(setup.dataset, dict(setup.stores), ids, size, Path(folder))


def mask_list(data: Data, n: int) -> Path:
    """A split-list file of the first ``n`` training ids (the masked ones under ``semi``)."""
    path = data.folder / f"masked_first_{n}.txt"
    text = "".join(f"{i}\n" for i in data.ids[:n])
    if not path.exists() or path.read_text() != text:
        atomic_write_bytes(path, text.encode())
    return path


def equal_steps(epochs: int, reference_images: int, images: int) -> int:
    """Epochs on ``images`` images that make as many SGD steps as ``epochs`` on ``reference_images``."""
    return max(1, round(epochs * math.ceil(reference_images / BATCH) / math.ceil(images / BATCH)))


# --------------------------------------------------------------------------------------------
# runs


def run_config(spec: RunSpec, data: Data, run_dir: Path, threads: int):
    from boxsup_ext.config import load_config

    n_images = spec.n_mask + spec.n_box
    store = {"boxsup": "selective_search", "boxsup_greedy": "selective_search"}.get(spec.mode, spec.mode)
    if spec.mode == "mask":
        supervision, n_images = "mask", spec.n_mask
    elif spec.n_mask == 0:
        supervision = "box"
    else:
        supervision = "semi"
    values = {
        "data.train.0.root": str(data.dataset),
        "data.train.0.proposals": str(data.stores.get(store, "")),
        "data.train.0.supervision": supervision,
        "data.train.0.limit": n_images if n_images < len(data.ids) else 0,
        "data.train.0.mask_list": str(mask_list(data, spec.n_mask)) if supervision == "semi" else "",
        "data.val.root": str(data.dataset),
        "data.crop_size": data.size,
        "train.mode": spec.mode,
        "train.epochs": spec.epochs,
        "train.lr_step": spec.lr_step,
        "train.val_every": 0,
        "relabel.snapshot_epochs": list(spec.snapshots),
        "run.run_dir": str(run_dir),
        "run.seed": spec.seed,
        "run.threads": threads,
        "run.progress": False,
        "run.tensorboard": False,
    }
    return load_config(BASE_CONFIG, list(spec.overrides), assignments=values)


def execute(spec: RunSpec, data: Data, out: Path, threads: int, subprocess_mode: bool) -> dict:
    """Train (or reuse / resume) one run and evaluate it; returns its result row."""
    from boxsup_ext.config import save_config

    from boxsup_ext.run_dir import RunDir, read_log

    run_dir = out / "runs" / spec.row / f"seed{spec.seed}"
    run = RunDir(run_dir)
    summary_file = run.summary_file
    config = run_config(spec, data, run_dir, threads)
    started = time.perf_counter()
    reused = summary_file.exists() and json.loads(summary_file.read_text()).get("epochs") == spec.epochs
    if not reused:
        run_dir.mkdir(parents=True, exist_ok=True)
        resume = run.record_file.exists()
        if subprocess_mode:
            config_file = run_dir.parent / f"seed{spec.seed}.yaml"
            save_config(config, config_file)
            command = [sys.executable, "-m", "boxsup_ext.train", "--config", str(config_file)] + (["--resume"] if resume else [])
            with open(run_dir.parent / f"seed{spec.seed}.log", "ab") as log:
                done = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                      env={**os.environ, "OMP_NUM_THREADS": str(threads)})
            if done.returncode != 0:
                raise RuntimeError(f"training {spec.name} failed (exit {done.returncode}); see {run_dir.parent / f'seed{spec.seed}.log'}")
        else:
            from boxsup_ext.train import train

            train(config, resume=resume)
    summary = json.loads(summary_file.read_text())
    log = read_log(run.log_file) if run.log_file.exists() else []
    label = [e for e in log if e.get("label_miou") is not None]
    row = {
        "row": spec.row, "mode": spec.mode, "seed": spec.seed, "n_mask": spec.n_mask, "n_box": spec.n_box,
        "epochs": spec.epochs, "steps": spec.epochs * math.ceil((spec.n_mask + spec.n_box) / BATCH),
        "overrides": list(spec.overrides), "val_miou": summary["final_val_miou"],
        "label_miou": label[-1]["label_miou"] if label else None,
        "label_miou_first": label[0]["label_miou"] if label else None,
        "train_seconds": summary["seconds"], "reused": reused, "run_dir": str(run_dir),
    }
    if spec.trimap:
        row["trimap"] = evaluate_trimap(run_dir, spec.trimap_widths)
    row["wall_seconds"] = time.perf_counter() - started
    return row


def evaluate_trimap(run_dir: Path, widths: str) -> dict:
    """``python -m boxsup_ext.evaluate --run RUN --trimap WIDTHS`` on the final checkpoint (reused when done)."""
    import contextlib

    from boxsup_ext.evaluate import main as evaluate_main

    out = run_dir / "eval" / "trimap"
    metrics = out / "metrics.json"
    if not metrics.exists():
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            evaluate_main(["--run", str(run_dir), "--trimap", widths, "--out", str(out), "--no-progress", "--overwrite"])
    result = json.loads(metrics.read_text())
    return {"miou": result["miou"], "metrics": str(metrics), **{k: result["trimap"][k] for k in ("widths", "boundary_miou", "interior_miou")}}


def run_all(specs: Sequence[RunSpec], datas: dict, out: Path, workers: int, threads: int = 0) -> list:
    """Every spec, ``workers`` at a time (each a subprocess with its share of the cores when
    workers > 1, in this process otherwise); longest first."""
    cores = os.cpu_count() or 1
    threads = threads or max(1, cores // workers)
    order = sorted(specs, key=lambda s: -cost_estimate(s))
    done: list = []

    def one(spec: RunSpec) -> dict:
        row = execute(spec, datas[spec.data], out, threads, subprocess_mode=workers > 1)
        how = "reused" if row["reused"] else f"{row['train_seconds']:.0f}s"
        print(f"  {spec.name:<34} val {fmt(row['val_miou'])}  labels {fmt(row['label_miou'])}  ({how})", flush=True)
        return row

    if workers == 1:
        done = [one(spec) for spec in order]
    else:
        with ThreadPoolExecutor(workers) as pool:
            done = list(pool.map(one, order))
    return done


def cost_estimate(spec: RunSpec) -> float:
    steps = spec.epochs * math.ceil((spec.n_mask + spec.n_box) / BATCH)
    relabels = spec.epochs * spec.n_box if spec.mode.startswith("boxsup") else 0
    pixels = BENCHES[spec.data].crop ** 2 if spec.data in BENCHES else int(spec.data) ** 2  # steps count the images already
    return (steps + 0.35 * relabels) * pixels / 64**2


# --------------------------------------------------------------------------------------------
# aggregation and reports


def fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def mean_std(values: Sequence[Optional[float]]) -> Optional[dict]:
    values = [v for v in values if v is not None]
    if not values:
        return None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(values), "values": values}


def pm(stat: Optional[dict]) -> str:
    if stat is None:
        return "-"
    return f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"


def aggregate(rows: Sequence[dict]) -> dict:
    by_row: dict = {}
    for r in rows:
        by_row.setdefault(r["row"], []).append(r)
    table = {}
    for key, runs in by_row.items():
        runs = sorted(runs, key=lambda r: r["seed"])
        table[key] = {
            "mode": runs[0]["mode"], "n_mask": runs[0]["n_mask"], "n_box": runs[0]["n_box"], "epochs": runs[0]["epochs"],
            "steps": runs[0]["steps"], "overrides": runs[0]["overrides"],
            "val_miou": mean_std([r["val_miou"] for r in runs]), "label_miou": mean_std([r["label_miou"] for r in runs]),
            "train_seconds": mean_std([r["train_seconds"] for r in runs]), "seeds": [r["seed"] for r in runs],
        }
        if all("trimap" in r for r in runs):
            widths = runs[0]["trimap"]["widths"]
            table[key]["trimap"] = {
                "widths": widths,
                "boundary_miou": [mean_std([r["trimap"]["boundary_miou"][i] for r in runs]) for i in range(len(widths))],
                "interior_miou": [mean_std([r["trimap"]["interior_miou"][i] for r in runs]) for i in range(len(widths))],
            }
    return table


def compare(table: dict, low: str, high: str, claim: str, tie: bool = False) -> Optional[dict]:
    """Whether ``high`` >= ``low`` (or, with ``tie``, within the spread) in mean val mIoU."""
    if low not in table or high not in table or not table[low]["val_miou"] or not table[high]["val_miou"]:
        return None
    a, b = table[low]["val_miou"], table[high]["val_miou"]
    diff = b["mean"] - a["mean"]
    spread = math.sqrt(a["std"] ** 2 + b["std"] ** 2)
    holds = abs(diff) <= max(spread, 0.01) if tie else diff > 0
    within = abs(diff) <= spread
    return {"claim": claim, "low": low, "high": high, "diff": diff, "spread": spread, "holds": holds, "within_spread": within}


def provenance() -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return {
        "commit": git("rev-parse", "--short=12", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no", "--", "boxsup_ext", "csrc", "configs", "benchmarks")),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {cpu}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def row_line(name: str, entry: dict, extra: str = "") -> str:
    return f"| {name} | {pm(entry['val_miou'])} | {pm(entry['label_miou'])} | {entry['n_mask']} | {entry['n_box']} | {entry['steps']} |{extra}"


HEADER = "| row | val mIoU (%) | training labels' mIoU (%) | masked images | box images | SGD steps |\n|---|---|---|---|---|---|"


def markdown(scale: Scale, seeds: int, table: dict, checks: list, prov: dict, total_s: float, figures: dict, reused: str = "") -> str:
    lines = [
        f"# BoxSup analogues on the synthetic set ({scale.name}: {seeds} seed(s))",
        "",
        f"Commit `{prov['commit']}`{' (with uncommitted changes)' if prov['dirty'] else ''}, {prov['machine']}, "
        f"Python {prov['python']}, torch {prov['torch']}, {prov['date']}; total {total_s / 60:.1f} min{reused}.",
        f"Synthetic set: {scale.num_train} training / {scale.num_val} validation images of {scale.size} px; "
        f"`tiny_fcn` with `configs/synthetic_boxsup.yaml`, {scale.epochs} epochs on the full set (lr / 10 after "
        f"{scale.lr_step}). Mean ± sample std over seeds 0..{seeds - 1} (the seed changes training only; data and "
        "proposals are shared). Validation mIoU of the final model; labels' mIoU: the last epoch's training labels "
        "against the training ground truth (ignore pixels left out).",
        "",
        "## Table 1: supervision",
        "",
        HEADER,
    ]
    for key, name in (("mask", "mask (all images)"), ("boxsup", "box (BoxSup, all images)"), ("semi", "semi (1/7 masks + boxes)")):
        if key in table:
            lines.append(row_line(name, table[key]))
    lines += ["", "## Table 2: estimated masks", "", HEADER]
    for key in ("rectangles", "grabcut", "boxsup_greedy", "boxsup"):
        if key in table:
            lines.append(row_line(key + (" (k = 1)" if key == "boxsup_greedy" else " (k = 5)" if key == "boxsup" else ""), table[key]))
    lines += ["", "## Table 3: more boxes against fewer masks (equal SGD steps)", "", HEADER]
    t3 = sorted((k for k in table if k.startswith("t3_")), key=lambda k: (table[k]["mode"] != "mask", table[k]["n_mask"], table[k]["n_box"]))
    for key in t3:
        e = table[key]
        name = f"mask, {e['n_mask']} masked" if e["mode"] == "mask" else f"semi, {e['n_mask']} masked + {e['n_box']} boxes"
        lines.append(row_line(name, e))
    if figures.get("table3"):
        lines += ["", f"Plot: `{figures['table3']}` (mIoU against masked images, and against box-only images added)."]
    trimap_rows = [k for k in table if "trimap" in table[k]]
    if trimap_rows:
        widths = table[trimap_rows[0]]["trimap"]["widths"]
        lines += ["", "## Figure 4: mIoU (%) inside trimap bands around object boundaries", "",
                  "| row | " + " | ".join(f"{w} px" for w in widths) + " | interior (at widest) |",
                  "|---|" + "---|" * (len(widths) + 1)]
        for key in trimap_rows:
            t = table[key]["trimap"]
            lines.append(f"| {key} | " + " | ".join(pm(s) for s in t["boundary_miou"]) + f" | {pm(t['interior_miou'][-1])} |")
    lines += ["", "## The paper's ordering", "", "| expectation | difference (points) | spread (points) | verdict |", "|---|---|---|---|"]
    for c in checks:
        verdict = "holds" if c["holds"] else "DEPARTS"
        if not c["holds"] and c["within_spread"]:
            verdict += " (within the spread)"
        elif c["holds"] and c["within_spread"] and not c["claim"].endswith("≈"):
            verdict += " (within the spread)"
        lines.append(f"| {c['claim']} | {100 * c['diff']:+.2f} | {100 * c['spread']:.2f} | {verdict} |")
    if figures:
        lines += ["", "Figures: " + ", ".join(f"`{v}`" for v in figures.values() if v)]
    return "\n".join(lines) + "\n"


def orderings(table: dict) -> list:
    checks = [
        compare(table, "rectangles", "grabcut", "rectangles < grabcut"),
        compare(table, "grabcut", "boxsup_greedy", "grabcut < boxsup_greedy"),
        compare(table, "boxsup_greedy", "boxsup", "boxsup_greedy < boxsup"),
        compare(table, "mask", "boxsup", "boxsup ≈ mask", tie=True),
        compare(table, "boxsup", "semi", "box <= semi"),
    ]
    small = [k for k in table if k.startswith("t3_mask_")]
    semis = [k for k in table if k.startswith("t3_semi_") or k == "semi"]
    if small and semis:
        n_small = min(table[k]["n_mask"] for k in table if k == "semi") if "semi" in table else None
        base = next((k for k in small if table[k]["n_mask"] == n_small), None)
        if base is not None:
            for key in sorted(semis, key=lambda k: table[k]["n_box"]):
                if table[key]["n_mask"] == n_small and table[key]["n_box"] > 0:
                    checks.append(compare(table, base, key, f"{n_small} masks < {n_small} masks + {table[key]['n_box']} boxes"))
    return [c for c in checks if c is not None]


# --------------------------------------------------------------------------------------------
# figures


def make_figures(table: dict, rows: list, out: Path, scale: Scale) -> dict:
    from boxsup_ext.figures import mask_evolution, training_curves, trimap_plot

    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    made: dict = {}
    first = {r["row"]: r for r in rows if r["seed"] == 0}
    if "boxsup" in first:
        run = Path(first["boxsup"]["run_dir"])
        images = [i.stem for i in sorted((run / "labels").glob("*.png"))[:4]]
        from boxsup_ext.data import open_dataset

        dataset = open_dataset(datas_dataset(run), "train", kind="synthetic")
        mask_evolution(run, images, dataset, ",".join(str(e) for e in scale.snapshots), fig_dir / "mask_evolution.png")
        made["mask_evolution"] = str(fig_dir / "mask_evolution.png")
    curve_rows = [k for k in ("boxsup", "boxsup_greedy", "rectangles", "grabcut", "mask", "semi") if k in first]
    if curve_rows:
        training_curves([Path(first[k]["run_dir"]) for k in curve_rows], curve_rows, fig_dir / "training_curves.png")
        made["curves"] = str(fig_dir / "training_curves.png")
    trimap_rows = [k for k in ("mask", "boxsup", "semi", "boxsup_greedy", "grabcut", "rectangles") if k in table and "trimap" in table[k]]
    if trimap_rows:
        means = [{"trimap": {"widths": table[k]["trimap"]["widths"],
                             "boundary_miou": [s["mean"] for s in table[k]["trimap"]["boundary_miou"]],
                             "interior_miou": [s["mean"] for s in table[k]["trimap"]["interior_miou"]]}} for k in trimap_rows]
        trimap_plot(means, trimap_rows, fig_dir / "trimap.png")
        made["trimap"] = str(fig_dir / "trimap.png")
    if any(k.startswith("t3_") for k in table):
        made["table3"] = table3_plot(table, fig_dir / "table3.png")
    return made


def datas_dataset(run_dir: Path) -> str:
    """The training dataset root of a run (from its config)."""
    from boxsup_ext.run_dir import open_run, run_data_source

    return str(run_data_source(open_run(run_dir), "train").root)


def table3_plot(table: dict, path: Path) -> str:
    from boxsup_ext.figures import _pyplot, save_figure

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.4))
    masked = sorted((table[k]["n_mask"], table[k]["val_miou"]) for k in table if k.startswith("t3_mask_"))
    semi_keys = [k for k in table if k.startswith("t3_semi_") or k == "semi"]
    n_small = table["semi"]["n_mask"] if "semi" in table else None
    boxes = sorted((table[k]["n_box"], table[k]["val_miou"]) for k in semi_keys if table[k]["n_mask"] == n_small)
    small = next((s for n, s in masked if n == n_small), None)
    if small is not None:
        boxes = [(0, small)] + [b for b in boxes if b[0] > 0]
    for ax, points, xlabel in ((axes[0], masked, "masked images (mask mode)"), (axes[1], boxes, f"box-only images added to {n_small} masked")):
        if points:
            xs = [p[0] for p in points]
            ax.errorbar(xs, [100 * p[1]["mean"] for p in points], yerr=[100 * p[1]["std"] for p in points], marker="o", capsize=3)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("val mIoU (%)")
        ax.grid(alpha=0.3)
    axes[0].set_title("more masks (equal SGD steps)", fontsize=10)
    axes[1].set_title("more boxes (equal SGD steps)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, 100)
    return str(path)


# --------------------------------------------------------------------------------------------
# plans


def reproduce_specs(scale: Scale, seeds: int, n_train: int) -> list:
    n_small = max(1, round(n_train / 7))
    e, s = scale.epochs, scale.lr_step
    specs = []
    for seed in range(seeds):
        base = dict(seed=seed, epochs=e, lr_step=s)
        specs += [
            RunSpec("mask", "mask", n_mask=n_train, n_box=0, trimap=True, **base),
            RunSpec("boxsup", "boxsup", n_mask=0, n_box=n_train, trimap=True, snapshots=scale.snapshots if seed == 0 else (), **base),
            RunSpec("semi", "boxsup", n_mask=n_small, n_box=n_train - n_small, trimap=True, **base),
            RunSpec("rectangles", "rectangles", n_mask=0, n_box=n_train, trimap=True, **base),
            RunSpec("grabcut", "grabcut", n_mask=0, n_box=n_train, trimap=True, **base),
            RunSpec("boxsup_greedy", "boxsup_greedy", n_mask=0, n_box=n_train, trimap=True, **base),
        ]
        for n in scale.masked_curve:
            n = min(n, n_train)
            if n == n_train:
                continue  # the Table 1 mask row
            ep = equal_steps(e, n_train, n)
            specs.append(RunSpec(f"t3_mask_{n}", "mask", seed=seed, n_mask=n, n_box=0, epochs=ep, lr_step=max(1, round(s * ep / e))))
        if n_small not in scale.masked_curve:
            ep = equal_steps(e, n_train, n_small)
            specs.append(RunSpec(f"t3_mask_{n_small}", "mask", seed=seed, n_mask=n_small, n_box=0, epochs=ep, lr_step=max(1, round(s * ep / e))))
        for b in scale.boxes_curve:
            b = min(b, n_train - n_small)
            if b == 0 or b == n_train - n_small:
                continue  # t3_mask_{n_small} and the Table 1 semi row
            ep = equal_steps(e, n_train, n_small + b)
            specs.append(RunSpec(f"t3_semi_{b}", "boxsup", seed=seed, n_mask=n_small, n_box=b, epochs=ep, lr_step=max(1, round(s * ep / e))))
    return [replace(spec, trimap=spec.trimap and spec.row in scale.trimap_rows) for spec in specs]


def recipe_variants() -> list:
    """(row, overrides) of the recipe study at 64 px: one factor at a time around the shipped
    recipe, the paper's recipe, and the warm-up on both."""
    shipped = ("relabel.lam=0.3", "relabel.min_iou=0.5", "relabel.clip_to_box=true", "relabel.lam_warmup_epochs=0")
    paper = PAPER_RECIPE  # one home: with the package's additions (keep_previous, ...) off

    def with_(base: tuple, **changes: Any) -> tuple:
        out = []
        for item in base:
            key = item.split("=")[0]
            short = key.split(".")[1]
            out.append(f"{key}={changes[short]}" if short in changes else item)
        return tuple(out)

    return [
        ("shipped (lam 0.3, min_iou 0.5, clip)", shipped),
        ("lam 0", with_(shipped, lam=0.0)),
        ("lam 1", with_(shipped, lam=1.0)),
        ("lam 3", with_(shipped, lam=3.0)),
        ("min_iou 0", with_(shipped, min_iou=0.0)),
        ("clip off", with_(shipped, clip_to_box="false")),
        ("shipped + warm-up 4", with_(shipped, lam_warmup_epochs=4)),
        ("lam 3 + warm-up 4", with_(shipped, lam=3.0, lam_warmup_epochs=4)),
        ("paper (lam 3, min_iou 0, no clip)", paper),
        ("paper + warm-up 4", with_(paper, lam_warmup_epochs=4)),
    ]


BIG_VARIANTS = ("shipped (lam 0.3, min_iou 0.5, clip)", "lam 0", "lam 3", "clip off", "shipped + warm-up 4", "lam 3 + warm-up 4",
                "paper (lam 3, min_iou 0, no clip)", "paper + warm-up 4")


def recipe_specs(scale: Scale, n_train: int, seeds: int, big: Optional[dict]) -> list:
    specs = []
    for index, (name, overrides) in enumerate(recipe_variants()):
        for seed in range(seeds):
            specs.append(RunSpec(f"recipe64_{index}", "boxsup", seed=seed, n_mask=0, n_box=n_train, epochs=scale.epochs,
                                 lr_step=scale.lr_step, overrides=overrides))
        if big and name in BIG_VARIANTS:
            for seed in range(big["seeds"]):
                specs.append(RunSpec(f"recipe{big['size']}_{index}", "boxsup", seed=seed, n_mask=0, n_box=big["num_train"],
                                     epochs=big["epochs"], lr_step=big["lr_step"], data=str(big["size"]), overrides=overrides))
    return specs


def recipe_markdown(table: dict, scale: Scale, big: Optional[dict], prov: dict, total_s: float) -> str:
    names = {i: name for i, (name, _) in enumerate(recipe_variants())}
    lines = [
        "# Recipe study: relabel settings for training from scratch (synthetic set, `tiny_fcn`, `boxsup` mode)",
        "",
        f"Commit `{prov['commit']}`{' (with uncommitted changes)' if prov['dirty'] else ''}, {prov['machine']}, {prov['date']}; "
        f"total {total_s / 60:.1f} min. Mean ± sample std over seeds. Val mIoU of the final model; labels' mIoU of "
        "the first and last epoch's training labels.",
        "",
    ]
    for tag, title in (("recipe64_", f"64 px, {scale.num_train} images, Selective Search k = 25/50/100 (as the demo), {scale.epochs} epochs"),
                       (f"recipe{big['size']}_" if big else "none", f"{big['size']} px, {big['num_train']} images, Selective Search at its defaults, {big['epochs']} epochs" if big else "")):
        keys = sorted((k for k in table if k.startswith(tag)), key=lambda k: int(k.rsplit("_", 1)[1]))
        if not keys:
            continue
        lines += [f"## {title}", "", "| recipe | overrides | seeds | val mIoU (%) | labels' mIoU, epoch 1 (%) | labels' mIoU, last epoch (%) |",
                  "|---|---|---|---|---|---|"]
        for key in keys:
            e = table[key]
            over = ", ".join(o.replace("relabel.", "") for o in e["overrides"])
            lines.append(f"| {names[int(key.rsplit('_', 1)[1])]} | {over} | {len(e['seeds'])} | {pm(e['val_miou'])} | "
                         f"{pm(e.get('label_miou_first'))} | {pm(e['label_miou'])} |")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# the headline: BoxSup against mask and rectangles, per data set and regime


@dataclass(frozen=True)
class Bench:
    """One data set of the headline table: preset, image size, split sizes, crop, schedule, and the
    Selective Search options of its store (None: the method's defaults)."""

    key: str
    title: str
    preset: str
    height: int
    width: int
    num_train: int
    num_val: int
    crop: int
    epochs: int
    lr_step: int
    ss: Optional[dict]
    max_seeds: Optional[int] = None  # at most this many of --seeds (a costly bench)


BENCHES = {
    "easy64": Bench("easy64", "easy preset, 64 px", "easy", 64, 64, 160, 60, 64, 20, 15, SS_64),
    # 160 px runs cost about 5x a 64 px one: 3 seeds
    "easy160": Bench("easy160", "easy preset, 160 px, Selective Search at its defaults", "easy", 160, 160, 96, 24, 160, 30, 22, None, max_seeds=3),
    # hard: masks need 40 epochs here (mask-supervised tiny_fcn: 31 mIoU after 20, 47 after 40 at seed 0)
    "hard": Bench("hard", "hard preset, 96 x 128 px", "hard", 96, 128, 160, 60, 96, 40, 30, SS_64),
    # the test suite's: seconds, not meaningful numbers
    "smoke": Bench("smoke", "smoke", "hard", 32, 48, 6, 4, 32, 1, 1, {"ks": [10, 25], "min_size": 5, "colour_spaces": ["hsv"]}),
}
REGIMES = ("scratch", "pretrained")
# The paper's relabel recipe: lam 3, sample among the 5 cheapest, every candidate, whole segments,
# none of the package's additions.
PAPER_RECIPE = ("relabel.lam=3.0", "relabel.topk=5", "relabel.min_iou=0.0", "relabel.clip_to_box=false", "relabel.lam_warmup_epochs=0",
                "relabel.agreement=0.0", "relabel.keep_previous=false", "relabel.greedy_from_epoch=0")
HEADLINE_ROWS = (("mask", "mask", ()), ("boxsup", "boxsup", ()), ("rectangles", "rectangles", ()), ("paper", "boxsup", PAPER_RECIPE))
# python -m boxsup_ext.pretrain arguments per scale (the width is tiny_fcn's: the config's model.width)
PRETRAIN_ARGS = {"smoke": ["--width", "4", "--images", "16", "--val-images", "8", "--size", "32", "--epochs", "1", "--batch-size", "8"]}


def pretrained_backbone(out: Path, scale: Scale) -> Path:
    """The synthetic 'ImageNet' backbone of the pretrained regime: ``python -m boxsup_ext.pretrain``
    (its defaults, one thread, so the file does not depend on the core count; the smoke scale's tiny
    settings) into ``out/pretrained/``, reused when there."""
    path = out / "pretrained" / f"tiny_fcn_{scale.name}.pt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "boxsup_ext.pretrain", "--out", str(path)]
        done = subprocess.run(command + PRETRAIN_ARGS.get(scale.name, []), cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"pretraining failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    return path


def parse_variants(values: Sequence[str]) -> list:
    """``--variant NAME:KEY=VALUE;KEY=VALUE`` (repeatable) as (name, overrides): extra boxsup rows."""
    variants = []
    for value in values:
        name, _, body = value.partition(":")
        overrides = tuple(item.strip() for item in body.split(";") if item.strip())
        if not name or not overrides or any("=" not in item for item in overrides) or not name.replace("_", "").isalnum():
            raise InputError(f"--variant {value!r}: give NAME:KEY=VALUE[;KEY=VALUE...] with NAME of letters, digits and _")
        variants.append((name, overrides))
    return variants


def headline_specs(benches: Sequence[Bench], regimes: Sequence[str], seeds: int, variants: Sequence, backbone: Optional[Path]) -> list:
    specs = []
    rows = list(HEADLINE_ROWS) + [(name, "boxsup", overrides) for name, overrides in variants]
    for bench in benches:
        for regime in regimes:
            init = (f"model.pretrained={backbone}",) if regime == "pretrained" else ()
            for row, mode, overrides in rows:
                for seed in range(min(seeds, bench.max_seeds or seeds)):
                    specs.append(RunSpec(f"{bench.key}_{regime}_{row}", mode, seed=seed, n_mask=bench.num_train if mode == "mask" else 0,
                                         n_box=0 if mode == "mask" else bench.num_train, epochs=bench.epochs, lr_step=bench.lr_step,
                                         data=bench.key, overrides=init + tuple(overrides)))
    return specs


def headline_checks(table: dict, bench: str, regime: str) -> Optional[dict]:
    """The issue's bar for BoxSup's default on one data set and regime: >= 95% of mask, >= rectangles
    + 10 points, and no seed more than 3 points below the mean."""
    key = f"{bench}_{regime}_"
    box, mask, rect = (table.get(key + row, {}).get("val_miou") for row in ("boxsup", "mask", "rectangles"))
    if not (box and mask and rect):
        return None
    worst = min(box["values"])
    return {"share_of_mask": box["mean"] / mask["mean"], "over_rectangles": box["mean"] - rect["mean"],
            "worst_seed_below_mean": box["mean"] - worst,
            "holds": box["mean"] >= 0.95 * mask["mean"] and box["mean"] - rect["mean"] >= 0.10 and box["mean"] - worst <= 0.03}


def headline_markdown(table: dict, benches: Sequence[Bench], regimes: Sequence[str], variants: Sequence, seeds: int, prov: dict, total_s: float) -> str:
    lines = [
        "# BoxSup against masks and rectangles: both presets, both regimes",
        "",
        f"Commit `{prov['commit']}`{' (with uncommitted changes)' if prov['dirty'] else ''}, {prov['machine']}, Python {prov['python']}, "
        f"torch {prov['torch']}, {prov['date']}; total {total_s / 60:.1f} min (runs reused from earlier invocations not timed). "
        "`tiny_fcn` (width 16) with `configs/synthetic_boxsup.yaml`; "
        "*scratch*: random initialisation; *pretrained*: the backbone of `python -m boxsup_ext.pretrain` (image-level labels of the "
        "`pretrain` preset's classes, disjoint from the easy and hard classes). Mean ± sample std over seeds "
        f"0..{seeds - 1} (fewer where a bench says so; the seed changes training only; data and proposals shared). Val mIoU of the final model; labels: the last epoch's training "
        "labels against the training ground truth (ignored pixels left out). *boxsup*: the shipped recipe; *paper*: "
        "lam 3, top-5, every candidate, whole segments.",
        "",
    ]
    names = [row for row, _, _ in HEADLINE_ROWS] + [name for name, _ in variants]
    for bench in benches:
        used = min(seeds, bench.max_seeds or seeds)
        lines += [f"## {bench.title}: {bench.num_train} training / {bench.num_val} validation images, {bench.epochs} epochs, {used} seeds", "",
                  "| row | " + " | ".join(f"{r}: val mIoU (%) | {r}: labels (%)" for r in regimes) + " |",
                  "|---|" + "---|---|" * len(regimes)]
        for row in names:
            cells = []
            for regime in regimes:
                entry = table.get(f"{bench.key}_{regime}_{row}")
                cells += [pm(entry["val_miou"]) if entry else "-", pm(entry["label_miou"]) if entry else "-"]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append("")
        for regime in regimes:
            check = headline_checks(table, bench.key, regime)
            entry = table.get(f"{bench.key}_{regime}_boxsup")
            if check and entry:
                seeds_text = " / ".join(f"{100 * v:.1f}" for v in entry["val_miou"]["values"])
                lines.append(f"- {regime}: boxsup {100 * check['share_of_mask']:.1f}% of mask, {100 * check['over_rectangles']:+.2f} points "
                             f"over rectangles, worst seed {100 * check['worst_seed_below_mean']:.2f} below the mean (seeds {seeds_text}): "
                             f"{'meets' if check['holds'] else 'MISSES'} the bar (>= 95%, >= +10, <= 3)")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 seeds (not 5) and 3 points per Table 3 curve (not 5-6); same schedule (about 30 min on 2 cores)")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # the test suite's seconds-long mode
    parser.add_argument("--seeds", type=int, help="number of training seeds (default: 5, --quick 3)")
    parser.add_argument("--out", default="runs/reproduce", help="output folder (default runs/reproduce)")
    parser.add_argument("--workers", type=int, default=1, help="runs in parallel (each a subprocess with cores / N threads)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (default: cores / workers)")
    parser.add_argument("--recipes", action="store_true", help="run the recipe study instead of the tables")
    parser.add_argument("--headline", action="store_true",
                        help="BoxSup's default against mask, rectangles and the paper's recipe on --benches x --regimes (headline.md/.json)")
    parser.add_argument("--benches", default="easy64,easy160,hard", help=f"with --headline: data sets among {', '.join(BENCHES)}")
    parser.add_argument("--regimes", default="scratch,pretrained", help="with --headline: scratch, pretrained or both")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE;...",
                        help="with --headline: an extra boxsup row with these config overrides (repeatable)")
    args = parser.parse_args(argv)
    if args.headline:
        return headline_main(args)
    scale = SCALES["smoke" if args.smoke else "quick" if args.quick else "full"]
    seeds = args.seeds if args.seeds is not None else (scale.recipe_seeds if args.recipes else scale.seeds)
    if seeds < 1:
        raise InputError(f"--seeds must be at least 1, got {seeds}")
    if args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    prov = provenance()
    ss64 = SS_64 if scale.size >= 64 else {"ks": [10, 25, 50], "min_size": 5, "colour_spaces": ["hsv", "lab"]}
    datas = {}
    methods = ("selective_search",) if args.recipes else ("selective_search", "rectangles", "grabcut")
    datas[str(scale.size)] = prepare_data(out / f"data{scale.size}", scale.num_train, scale.num_val, scale.size, methods,
                                          {"selective_search": ss64}, args.workers)
    big = scale.recipe_big if args.recipes else None
    if big:
        datas[str(big["size"])] = prepare_data(out / f"data{big['size']}", big["num_train"], big["num_val"], big["size"],
                                               ("selective_search",), {}, args.workers)
    print(f"data and proposals ready in {time.perf_counter() - started:.0f}s", flush=True)
    n_train = scale.num_train
    if args.recipes:
        specs = recipe_specs(scale, n_train, seeds, big)
        specs = [replace(s, data=str(scale.size)) if s.data == "64" else s for s in specs]
    else:
        specs = reproduce_specs(scale, seeds, n_train)
        specs = [replace(s, data=str(scale.size)) for s in specs]
    # the scale's own settings go with each run: its extra overrides first, then the run's
    specs = [replace(s, overrides=tuple(scale.extra) + tuple(s.overrides), trimap_widths=scale.trimap) for s in specs]
    print(f"{len(specs)} runs, {args.workers} at a time", flush=True)
    rows = run_all(specs, datas, out, args.workers, args.threads)
    table = aggregate(rows)
    for key in table:
        table[key]["label_miou_first"] = mean_std([r["label_miou_first"] for r in rows if r["row"] == key])
    total_s = time.perf_counter() - started
    if args.recipes:
        text = recipe_markdown(table, scale, big, prov, total_s)
        report = {"provenance": prov, "scale": scale.name, "seeds": seeds, "total_seconds": total_s, "table": table, "runs": rows,
                  "variants": {i: {"name": n, "overrides": list(o)} for i, (n, o) in enumerate(recipe_variants())}}
        atomic_write_bytes(out / "recipes.md", text.encode())
        atomic_write_json(out / "recipes.json", report)
        print(text)
    else:
        figures = make_figures(table, rows, out, scale)
        checks = orderings(table)
        total_s = time.perf_counter() - started
        count = sum(r["reused"] for r in rows)
        reused = f" ({count} of {len(rows)} runs reused from an earlier invocation, not timed here)" if count else ""
        text = markdown(scale, seeds, table, checks, prov, total_s, {k: os.path.relpath(v, out) for k, v in figures.items()}, reused)
        report = {"provenance": prov, "scale": scale.name, "seeds": seeds, "total_seconds": total_s, "table": table,
                  "orderings": checks, "figures": figures, "runs": rows,
                  "settings": {"num_train": scale.num_train, "num_val": scale.num_val, "size": scale.size,
                               "epochs": scale.epochs, "lr_step": scale.lr_step, "config": str(BASE_CONFIG.relative_to(REPO))}}
        atomic_write_bytes(out / "tables.md", text.encode())
        atomic_write_json(out / "results.json", report)
        print(text)
    print(f"total time {total_s:.0f}s ({total_s / 60:.1f} min); wrote {out}", flush=True)
    return 0


def headline_main(args: argparse.Namespace) -> int:
    benches = [b.strip() for b in args.benches.split(",") if b.strip()]
    regimes = [r.strip() for r in args.regimes.split(",") if r.strip()]
    if args.smoke:
        benches = ["smoke"]
    bad = [b for b in benches if b not in BENCHES] + [r for r in regimes if r not in REGIMES]
    if bad or not benches or not regimes:
        raise InputError(f"--benches/--regimes: unknown or empty ({', '.join(bad) or 'nothing given'}); choose from "
                         f"{', '.join(BENCHES)} and {', '.join(REGIMES)}")
    variants = parse_variants(args.variant)
    scale = SCALES["smoke" if args.smoke else "quick" if args.quick else "full"]
    seeds = args.seeds if args.seeds is not None else scale.seeds
    if seeds < 1 or args.workers < 1:
        raise InputError(f"--seeds and --workers must be at least 1, got {seeds} and {args.workers}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    prov = provenance()
    datas = {}
    for key in benches:
        b = BENCHES[key]
        datas[key] = prepare_data(out / f"data_{key}", b.num_train, b.num_val, b.crop, ("selective_search", "rectangles"),
                                  {"selective_search": b.ss} if b.ss else {}, args.workers, preset=b.preset, height=b.height, width=b.width)
    backbone = pretrained_backbone(out, scale) if "pretrained" in regimes else None
    print(f"data, proposals and backbone ready in {time.perf_counter() - started:.0f}s", flush=True)
    specs = headline_specs([BENCHES[k] for k in benches], regimes, seeds, variants, backbone)
    specs = [replace(s, overrides=tuple(scale.extra) + tuple(s.overrides)) for s in specs]
    print(f"{len(specs)} runs, {args.workers} at a time", flush=True)
    rows = run_all(specs, datas, out, args.workers, args.threads)
    table = aggregate(rows)
    total_s = time.perf_counter() - started
    text = headline_markdown(table, [BENCHES[k] for k in benches], regimes, variants, seeds, prov, total_s)
    checks = {f"{b}_{r}": headline_checks(table, b, r) for b in benches for r in regimes}
    report = {"provenance": prov, "seeds": seeds, "total_seconds": total_s, "table": table, "checks": checks, "runs": rows,
              "benches": {k: vars(BENCHES[k]) for k in benches}, "regimes": regimes, "backbone": str(backbone) if backbone else None,
              "variants": {name: list(o) for name, o in variants}}
    atomic_write_bytes(out / "headline.md", text.encode())
    atomic_write_json(out / "headline.json", report)
    print(text)
    print(f"total time {total_s:.0f}s ({total_s / 60:.1f} min); wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    from boxsup_ext.utils import run_cli

    sys.exit(run_cli(main))
