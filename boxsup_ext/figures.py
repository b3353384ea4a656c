"""The paper's figures from a run or from evaluation results, as PNG files (matplotlib).

    python -m boxsup_ext.figures mask-evolution --run RUN --images ID1,ID2 [--epochs 1,5,20] --out F.png
    python -m boxsup_ext.figures curves --run RUN [RUN ...] [--names a,b] --out F.png
    python -m boxsup_ext.figures trimap --results EVAL/metrics.json [...] [--names a,b] --out F.png
    python -m boxsup_ext.figures compare --results A/metrics.json B/metrics.json [--names a,b]
        [--per-class] --out F.png

``mask-evolution`` is the paper's Figure 3 (image with boxes, ground truth, estimated labels at
chosen epochs); ``curves`` plots loss, validation mIoU and the estimated labels' mIoU per epoch from
``log.jsonl``; ``trimap`` is Figure 4 (mIoU inside trimap bands of growing width, from
``python -m boxsup_ext.evaluate --trimap``); ``compare`` renders several results as one table.
Every figure is written at ``--dpi`` (default 100) with a size set by its content, atomically.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from boxsup_ext.evaluation.evaluator import open_dataset_arg
from boxsup_ext.run_dir import RunDir, open_run, read_log, run_data_source, snapshot_epochs, snapshot_path
from boxsup_ext.utils import InputError, atomic_write_bytes, ensure_output_dir, run_cli

MAX_DEFAULT_EPOCHS = 5


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise InputError("figures need matplotlib: run `pip install matplotlib`") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig: Any, dpi: int) -> bytes:
    """A matplotlib figure as PNG bytes, exactly ``fig.get_size_inches() * dpi`` pixels (no tight
    cropping); the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    _pyplot().close(fig)
    return buffer.getvalue()


def save_figure(fig: Any, path: Path, dpi: int) -> None:
    """Write a matplotlib figure as PNG through a temporary file (:func:`figure_png`), then close it."""
    atomic_write_bytes(path, figure_png(fig, dpi))


def colorize(label: np.ndarray) -> np.ndarray:
    """uint8 [H, W] class map -> uint8 [H, W, 3] RGB in the VOC palette (255 = ignore, cream)."""
    from boxsup_ext.data import voc_palette

    palette = np.asarray(voc_palette(), dtype=np.uint8).reshape(256, 3)
    return palette[np.asarray(label, dtype=np.uint8)]


def _split_names(text: Optional[str], count: int, defaults: Sequence[str]) -> list[str]:
    if not text:
        return list(defaults)
    names = [n.strip() for n in text.split(",")]
    if len(names) != count:
        raise InputError(f"--names gives {len(names)} names for {count} inputs; give one per input")
    return names


def _parse_ints(text: str, what: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"{what} must be comma-separated integers, got {text!r}") from None


# --------------------------------------------------------------------------- mask evolution


def _pick_epochs(available: list[int], requested: Optional[str], run_dir: Path) -> list[int]:
    if not available:
        raise InputError(f"{run_dir}/labels/snapshots has no epoch_<NNN> folders; train with label snapshots on")
    if requested:
        epochs = _parse_ints(requested, "--epochs")
        missing = [e for e in epochs if e not in available]
        if missing:
            raise InputError(f"--epochs {missing} have no label snapshot in {run_dir}; available: {available}")
        return epochs
    if len(available) <= MAX_DEFAULT_EPOCHS:
        return available
    picks = np.linspace(0, len(available) - 1, MAX_DEFAULT_EPOCHS).round().astype(int)
    return [available[i] for i in sorted(set(picks))]


def _dataset_rows(dataset: Any, image_ids: Sequence[str]) -> list[tuple[str, int]]:
    """(image id, dataset index) of each of ``image_ids``; an :class:`InputError` names the first
    one the dataset lacks."""
    if not image_ids:
        raise InputError("--images needs at least one training image id")
    rows = []
    for image_id in image_ids:
        try:
            index = dataset.index_of(image_id)
        except (KeyError, ValueError, InputError):
            raise InputError(f"--images: {image_id!r} is not in dataset {getattr(dataset, 'name', '')}") from None
        rows.append((image_id, index))
    return rows


def _draw_evolution_row(
    axes_row: Any, run_dir: Path, dataset: Any, image_id: str, index: int, epochs: Sequence[int], gt_column: bool, palette: np.ndarray
) -> None:
    """One row of :func:`mask_evolution`: the image with its boxes in their class colours (float
    RGB ``palette`` [256, 3]), the ground truth when ``gt_column`` (blank for an image without),
    then the label snapshot of each of ``epochs``."""
    from matplotlib.patches import Rectangle

    from boxsup_ext.data import load_label_png

    record = dataset[index]
    image = dataset.load_image(index)
    axes_row[0].imshow(image)
    for box, label in zip(record.boxes, record.labels):
        x0, y0, x1, y1 = (float(v) for v in box)
        axes_row[0].add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=2, edgecolor=palette[int(label)]))
    axes_row[0].set_ylabel(image_id, fontsize=8)
    column = 1
    if gt_column:
        gt = dataset.load_class_map(index)
        axes_row[1].imshow(colorize(gt) if gt is not None else np.full_like(image, 255), interpolation="nearest")
        column = 2
    for epoch in epochs:
        path = snapshot_path(RunDir(run_dir), epoch, image_id)
        if path is None:
            raise InputError(f"{run_dir}: no label snapshot for image {image_id!r} at epoch {epoch}")
        axes_row[column].imshow(colorize(load_label_png(path)), interpolation="nearest")
        column += 1


def mask_evolution(
    run_dir: Path,
    image_ids: Sequence[str],
    dataset: Any,
    epochs: Optional[str],
    out: Path,
    dpi: int = 100,
    panel_inches: float = 2.0,
) -> tuple[int, int]:
    """The paper's Figure 3: one row per image — the image with its boxes, the ground truth (if
    the dataset has it), and the estimated labels at each chosen epoch.

    Args:
        run_dir: trainer run with ``labels/snapshots/epoch_<NNN>/<image_id>.png``.
        image_ids: training image ids to show.
        dataset: the training dataset the run used (for images, boxes and ground truth).
        epochs: ``"1,5,20"``, or None for up to five epochs spread over the available snapshots.
        out: PNG path. Returns (rows, columns) of panels.
    """
    plt = _pyplot()
    chosen = _pick_epochs(snapshot_epochs(RunDir(run_dir)), epochs, run_dir)
    rows = _dataset_rows(dataset, image_ids)
    gt_column = any(dataset.load_class_map(index) is not None for _, index in rows)
    columns = 1 + gt_column + len(chosen)
    fig, axes = plt.subplots(
        len(rows), columns, figsize=(panel_inches * columns, panel_inches * len(rows) + 0.3), squeeze=False
    )
    palette = colorize(np.arange(256, dtype=np.uint8)[None])[0] / 255.0
    for r, (image_id, index) in enumerate(rows):
        _draw_evolution_row(axes[r], run_dir, dataset, image_id, index, chosen, gt_column, palette)
    titles = ["image + boxes"] + (["ground truth"] if gt_column else []) + [f"epoch {e}" for e in chosen]
    for c, title in enumerate(titles):
        axes[0, c].set_title(title, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, out, dpi)
    return len(rows), columns


# --------------------------------------------------------------------------- curves

CURVE_PANELS = (("loss", "training loss", 1.0), ("val_miou", "validation mIoU (%)", 100.0), ("label_miou", "estimated labels' mIoU (%)", 100.0))


def training_curves(run_dirs: Sequence[Path], names: Sequence[str], out: Path, dpi: int = 100) -> dict[str, int]:
    """Loss, validation mIoU and estimated-label mIoU per epoch, one line per run.

    mIoU values in ``log.jsonl`` are fractions and are plotted in percent; epochs without a value
    are left out of that panel. Returns how many points each panel drew.
    """
    plt = _pyplot()
    logs = [read_log(RunDir(run_dir).log_file) for run_dir in run_dirs]
    fig, axes = plt.subplots(1, len(CURVE_PANELS), figsize=(4.0 * len(CURVE_PANELS), 3.2), squeeze=False)
    drawn: dict[str, int] = {}
    for ax, (key, title, factor) in zip(axes[0], CURVE_PANELS):
        drawn[key] = 0
        for name, records in zip(names, logs):
            points = [(r["epoch"], float(r[key]) * factor) for r in records if r.get(key) is not None and "epoch" in r]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o", markersize=3, label=name)
                drawn[key] += len(points)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if drawn[key] == 0:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
        elif len(names) > 1:
            ax.legend(fontsize=8)
    if not any(drawn.values()):
        raise InputError(f"log.jsonl of {', '.join(map(str, run_dirs))} has no loss or mIoU values to plot")
    fig.tight_layout()
    save_figure(fig, out, dpi)
    return drawn


# --------------------------------------------------------------------------- results files


def read_results(path: Path) -> dict[str, Any]:
    """An evaluation ``metrics.json`` written by ``python -m boxsup_ext.evaluate``."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.json"
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"--results {path} does not exist; give an evaluate output's metrics.json") from None
    except (OSError, ValueError) as err:
        raise InputError(f"--results {path} is not readable JSON ({err.__class__.__name__})") from None
    if not isinstance(results, dict) or "miou" not in results:
        raise InputError(f"--results {path} has no 'miou'; it was not written by boxsup_ext.evaluate")
    return results


def _default_name(path: Path) -> str:
    path = Path(path)
    return (path if path.is_dir() else path.parent).name or str(path)


def trimap_plot(results: Sequence[dict[str, Any]], names: Sequence[str], out: Path, dpi: int = 100) -> int:
    """:func:`trimap_figure` written to ``out`` as PNG; returns the lines drawn."""
    fig, lines = trimap_figure(results, names)
    save_figure(fig, out, dpi)
    return lines


def trimap_figure(results: Sequence[dict[str, Any]], names: Sequence[str]) -> tuple[Any, int]:
    """The paper's Figure 4: mIoU (%) inside the trimap band against band width (pixels), one
    solid line per result; the interior mIoU dashed in the same colour. Returns (figure, lines drawn)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    lines = 0
    for name, result in zip(names, results):
        trimap = result.get("trimap")
        if not trimap:
            raise InputError(f"results {name!r} have no trimap section; run evaluate with --trimap 1,2,4,8")
        widths = trimap["widths"]
        boundary = [np.nan if v is None else 100.0 * v for v in trimap["boundary_miou"]]
        interior = [np.nan if v is None else 100.0 * v for v in trimap["interior_miou"]]
        (line,) = ax.plot(widths, boundary, marker="o", label=f"{name} (band)")
        ax.plot(widths, interior, linestyle="--", marker="x", color=line.get_color(), label=f"{name} (interior)")
        lines += 2
    ax.set_xlabel("trimap width (pixels)")
    ax.set_ylabel("mean IoU (%)")
    ax.set_title("segmentation accuracy near object boundaries", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig, lines


def comparison_table(
    results: Sequence[dict[str, Any]], names: Sequence[str], out: Path, per_class: bool = False, dpi: int = 100
) -> tuple[int, int]:
    """Several evaluation results as one table image: rows are the results, columns mIoU, pixel
    accuracy, image count, boundary mIoU at each trimap width present in all, and with
    ``per_class`` the per-class IoU. Values in percent; the best mIoU row is bold.
    Returns (rows, columns) of the table body."""
    plt = _pyplot()
    header = ["mIoU", "pixel acc.", "images"]
    widths = None
    if all(r.get("trimap") for r in results):
        common = set(results[0]["trimap"]["widths"])
        for r in results[1:]:
            common &= set(r["trimap"]["widths"])
        widths = sorted(common)
        header += [f"band {w}px" for w in widths]
    class_names = list(results[0].get("per_class_iou", {})) if per_class else []
    header += class_names

    def pct(value: Optional[float]) -> str:
        return "-" if value is None else f"{100.0 * value:.1f}"

    body = []
    for result in results:
        row = [pct(result["miou"]), pct(result.get("pixel_accuracy")), str(result.get("num_images", "-"))]
        if widths is not None:
            trimap = result["trimap"]
            row += [pct(trimap["boundary_miou"][trimap["widths"].index(w)]) for w in widths]
        row += [pct(result.get("per_class_iou", {}).get(c)) for c in class_names]
        body.append(row)
    # Size the figure to the text: each column as wide as its longest entry (about 0.075 inch per
    # character at 9 pt), each row 0.3 inch, a 0.15 inch margin all round.
    columns = [["run", *names]] + [[header[c]] + [row[c] for row in body] for c in range(len(header))]
    col_inches = [0.25 + 0.075 * max(len(text) for text in column) for column in columns]
    margin = 0.15
    fig_w, fig_h = sum(col_inches) + 2 * margin, 0.3 * (len(body) + 1) + 2 * margin
    fig = plt.figure(figsize=(fig_w, fig_h))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.axis("off")
    bbox = (margin / fig_w, margin / fig_h, 1 - 2 * margin / fig_w, 1 - 2 * margin / fig_h)
    # Names go in an ordinary first column: matplotlib's rowLabels ignore the bbox and get clipped.
    table = ax.table(
        cellText=[[name] + row for name, row in zip(names, body)], colLabels=["run"] + header, cellLoc="center", bbox=bbox
    )
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    for (row, col), cell in table.get_celld().items():
        cell.set_width(col_inches[col] / sum(col_inches))
        if row == 0:
            cell.set_facecolor("#dde6f0")
    mious = [r["miou"] if r["miou"] is not None else -1.0 for r in results]
    best = int(np.argmax(mious))
    for col in range(len(header) + 1):
        table[(best + 1, col)].get_text().set_fontweight("bold")
    save_figure(fig, out, dpi)
    return len(body), len(header)


# --------------------------------------------------------------------------- CLI


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m boxsup_ext.figures", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--out", required=True, type=Path, help="output PNG file (you name it, so an existing file there is replaced)")
        sub.add_argument("--dpi", type=int, default=100, help="pixels per inch of the PNG (default 100)")

    evo = commands.add_parser("mask-evolution", help="Figure 3: estimated labels over epochs")
    evo.add_argument("--run", required=True, type=Path, help="trainer run directory")
    evo.add_argument("--images", required=True, help="comma-separated training image ids")
    evo.add_argument("--epochs", help="comma-separated epochs (default: up to 5 spread over the snapshots)")
    evo.add_argument("--dataset", help="training dataset root (default: the run config's first data.train)")
    evo.add_argument("--kind", help="dataset kind for --dataset (default: the run config's)")
    evo.add_argument("--split", help="dataset split for --dataset (default: the run config's)")
    common(evo)

    curves = commands.add_parser("curves", help="loss / val mIoU / label mIoU per epoch")
    curves.add_argument("--run", required=True, nargs="+", type=Path, help="one or more run directories")
    curves.add_argument("--names", help="comma-separated legend names (default: run folder names)")
    common(curves)

    for name, help_text in (("trimap", "Figure 4: mIoU in trimap bands"), ("compare", "results of several runs as a table")):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--results", required=True, nargs="+", type=Path, help="evaluate outputs (metrics.json or its folder)")
        sub.add_argument("--names", help="comma-separated names (default: the results' folder names)")
        if name == "compare":
            sub.add_argument("--per-class", action="store_true", help="add a column per class")
        common(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.dpi < 10:
        raise InputError(f"--dpi must be at least 10, got {args.dpi}")
    if args.out.is_dir():
        raise InputError(f"--out {args.out} is a folder; give the PNG file to write, e.g. {args.out / (args.command + '.png')}")
    ensure_output_dir(args.out.parent, "--out folder", create=False)
    if args.command == "mask-evolution":
        run = open_run(args.run)
        source = run_data_source(run, "train") if not (args.dataset and args.kind and args.split) else None
        dataset = open_dataset_arg(args.dataset or source.root, args.split or source.split, args.kind or source.kind)
        ids = [i.strip() for i in args.images.split(",") if i.strip()]
        rows, columns = mask_evolution(run.root, ids, dataset, args.epochs, args.out, args.dpi)
        print(f"wrote {args.out} ({rows} images x {columns} panels)")
    elif args.command == "curves":
        names = _split_names(args.names, len(args.run), [r.name for r in args.run])
        drawn = training_curves(args.run, names, args.out, args.dpi)
        print(f"wrote {args.out} (points: {', '.join(f'{k} {v}' for k, v in drawn.items())})")
    else:
        results = [read_results(p) for p in args.results]
        names = _split_names(args.names, len(results), [_default_name(p) for p in args.results])
        if args.command == "trimap":
            trimap_plot(results, names, args.out, args.dpi)
            print(f"wrote {args.out} ({len(results)} results)")
        else:
            rows, columns = comparison_table(results, names, args.out, args.per_class, args.dpi)
            print(f"wrote {args.out} ({rows} rows x {columns} columns)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
