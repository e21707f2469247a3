"""The comparison across backbones: the seed's graphs, ROC curves, confusion matrices, a leaderboard, and one
self-contained report.html (images embedded) that opens offline and in the KFP UI."""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on clusters and CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from cxr import files, settings  # noqa: E402
from cxr.errors import UserError  # noqa: E402
from cxr.failures import Failure, read_failure  # noqa: E402

# The seed's test accuracies (GUIDE section 1), from an image-level re-split that leaks patients.
SEED_TEST_ACCURACY = {"MobileNet": 0.9769, "InceptionV3": 0.9556, "Xception": 0.9912, "ResNet50": 0.9960,
                      "VGG16": 0.9944}


@dataclass(frozen=True)
class Result:
    backbone: str
    training: dict  # train_metrics.json
    history: pd.DataFrame  # history.csv
    metrics: dict  # metrics.json
    roc: pd.DataFrame  # roc.csv


def load_result(folder: Path) -> Result:
    """One evaluated backbone, from the folder `cxr evaluate` wrote."""
    folder = Path(folder)
    for name in (files.TRAIN_METRICS, files.HISTORY, files.METRICS, files.ROC):
        if not (folder / name).is_file():
            raise UserError(f"missing {folder / name}: not a result folder of `cxr evaluate`")
    metrics = json.loads((folder / files.METRICS).read_text())
    return Result(metrics["backbone"], json.loads((folder / files.TRAIN_METRICS).read_text()),
                  pd.read_csv(folder / files.HISTORY), metrics, pd.read_csv(folder / files.ROC))


def _save(figure: plt.Figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_loss_acc(result: Result, path: Path) -> None:
    """Train and validation loss and accuracy per epoch, as in the seed's section 4."""
    history = result.history
    figure, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in ((loss_axis, "loss"), (acc_axis, "accuracy")):
        axis.plot(history["epoch"], history[metric], "o-", label=f"train {metric}")
        axis.plot(history["epoch"], history[f"val_{metric}"], "s-", label=f"validation {metric}")
        axis.axvline(result.training["best_epoch"], color="grey", linestyle=":", label="best epoch (kept)")
        axis.set(xlabel="epoch", ylabel=metric, title=f"{result.backbone}: {metric}")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.legend()
    _save(figure, path)


def plot_comparison(results: list[Result], path: Path) -> None:
    """x: learning time, y: accuracy, train / validation / test marked for each model (the seed's section 5)."""
    figure, axis = plt.subplots(figsize=(8, 5))
    markers = {"train": "o", "validation": "s", "test": "^"}
    for index, result in enumerate(results):
        minutes = result.training["learning_time_seconds"] / 60
        values = {"train": result.training["best"]["accuracy"],
                  "validation": result.training["best"]["val_accuracy"],
                  "test": result.metrics["at_default_threshold"]["accuracy"]["value"]}
        color = f"C{index}"
        for split, value in values.items():
            axis.scatter(minutes, value, marker=markers[split], color=color, s=60)
        axis.annotate(result.backbone, (minutes, values["test"]), textcoords="offset points", xytext=(6, -4))
    for split, marker in markers.items():
        axis.scatter([], [], marker=marker, color="black", label=split)
    axis.set(xlabel="learning time (minutes)", ylabel="accuracy", title="Backbones: accuracy vs learning time")
    axis.grid(alpha=0.3)
    axis.legend()
    _save(figure, path)


def plot_roc(results: list[Result], path: Path) -> None:
    figure, axis = plt.subplots(figsize=(6, 6))
    for result in results:
        auc = result.metrics["roc_auc"]["value"]
        axis.plot(result.roc["fpr"], result.roc["tpr"], label=f"{result.backbone} (AUC {auc:.3f})")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    axis.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity (true positive rate)",
             title="ROC on the test split")
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right")
    _save(figure, path)


def plot_confusion(results: list[Result], path: Path) -> None:
    figure, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.4), squeeze=False)
    for axis, result in zip(axes[0], results, strict=True):
        matrix = result.metrics["at_default_threshold"]["confusion_matrix"]
        axis.imshow(matrix, cmap="Blues")
        for row in range(2):
            for column in range(2):
                axis.text(column, row, str(matrix[row][column]), ha="center", va="center", fontsize=12)
        axis.set(xticks=[0, 1], yticks=[0, 1], xticklabels=settings.CLASS_NAMES, yticklabels=settings.CLASS_NAMES,
                 xlabel="predicted", ylabel="true", title=result.backbone)
    _save(figure, path)


def _span(interval: list[float | None]) -> str:
    return "n/a" if None in interval else f"{interval[0]:.3f}-{interval[1]:.3f}"


def leaderboard(results: list[Result]) -> pd.DataFrame:
    """One row per backbone, sorted by test ROC AUC (best first)."""
    rows = []
    for result in results:
        best, metrics = result.training["best"], result.metrics
        at_default, at_validation = metrics["at_default_threshold"], metrics["at_validation_threshold"]
        rows.append({
            "backbone": result.backbone,
            "train_loss": best["loss"], "train_accuracy": best["accuracy"],
            "val_loss": best["val_loss"], "val_accuracy": best["val_accuracy"],
            "test_loss": metrics["loss"], "test_accuracy": at_default["accuracy"]["value"],
            "sensitivity": at_default["sensitivity"]["value"], "specificity": at_default["specificity"]["value"],
            "roc_auc": metrics["roc_auc"]["value"],
            "roc_auc_ci95": _span(metrics["roc_auc"]["ci95"]),
            "val_threshold": metrics["thresholds"]["validation"],
            "sensitivity_at_val_threshold": at_validation["sensitivity"]["value"],
            "specificity_at_val_threshold": at_validation["specificity"]["value"],
            "learning_time": result.training["learning_time"],
            "epochs": result.training["epochs_run"],
        })
    return pd.DataFrame(rows).sort_values("roc_auc", ascending=False, kind="stable").reset_index(drop=True)


def to_markdown(table: pd.DataFrame) -> str:
    def cell(value) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _embedded(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def render_html(table: pd.DataFrame, images: list[Path], failures: list[Failure]) -> str:
    seed_rows = "".join(f"<tr><td>{name}</td><td>{value:.4f}</td></tr>" for name, value in SEED_TEST_ACCURACY.items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Chest X-ray backbone benchmark</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:4px 6px;text-align:right}}
img{{max-width:100%;margin:1em 0}}</style></head><body>
<h1>Chest X-ray pneumonia: backbone comparison</h1>
{_missing_html(failures)}
<p>Sorted by test ROC AUC. Test accuracy, sensitivity and specificity at threshold 0.5; the validation threshold
maximises sensitivity + specificity on validation data and is never chosen on test. Intervals: 95 % bootstrap
over test patients. Train and validation columns are at the best epoch, whose weights were kept.</p>
{table.to_html(index=False, float_format=lambda v: f"{v:.4f}")}
{"".join(_embedded(path) for path in images)}
<h2>For reference: the seed's reported test accuracy</h2>
<p>From an image-level re-split that puts one patient's films on both sides (GUIDE section 1): not comparable
with a patient-level split; published results on the official test split are 93-96 %.</p>
<table><tr><th>backbone</th><th>seed test accuracy</th></tr>{seed_rows}</table>
</body></html>
"""


def _missing_html(failures: list[Failure]) -> str:
    if not failures:
        return ""
    items = "".join(f"<li>{html.escape(f.line())}</li>" for f in failures)
    return f'<h2 style="color:#b00">Missing from this comparison</h2><ul>{items}</ul>'


def write_report(result_dirs: list[Path], out: Path) -> tuple[dict[str, Path], list[Failure]]:
    """Write every graph, the leaderboard (csv, md) and report.html into `out`; return file name -> path, and the
    failed trainings among `result_dirs` (folders holding failure.json), which the report names."""
    if not result_dirs:
        raise UserError("no result folders given")
    failures = [f for f in map(read_failure, result_dirs) if f is not None]
    finished = [d for d in result_dirs if read_failure(d) is None]
    if not finished:
        raise UserError("no finished result: " + "; ".join(f.line() for f in failures))
    results = sorted((load_result(d) for d in finished), key=lambda r: r.backbone)
    names = [r.backbone for r in results]
    if len(set(names)) != len(names):
        raise UserError(f"two result folders hold the same backbone: {', '.join(names)}")
    out = Path(out)
    if (out / files.REPORT_HTML).exists():
        raise UserError(f"{out / files.REPORT_HTML} exists already; choose another --out folder")
    out.mkdir(parents=True, exist_ok=True)
    written = {name: out / name for name in
               [files.loss_acc_graph(n) for n in names] + [files.COMPARISON_PLOT, files.ROC_PLOT,
                                                            files.CONFUSION_PLOT, files.LEADERBOARD_CSV,
                                                            files.LEADERBOARD_MD, files.REPORT_HTML]}
    for result in results:
        plot_loss_acc(result, written[files.loss_acc_graph(result.backbone)])
    plot_comparison(results, written[files.COMPARISON_PLOT])
    plot_roc(results, written[files.ROC_PLOT])
    plot_confusion(results, written[files.CONFUSION_PLOT])
    table = leaderboard(results)
    table.to_csv(written[files.LEADERBOARD_CSV], index=False)
    written[files.LEADERBOARD_MD].write_text(to_markdown(table))
    images = [written[files.COMPARISON_PLOT], written[files.ROC_PLOT], written[files.CONFUSION_PLOT]]
    images += [written[files.loss_acc_graph(name)] for name in table["backbone"]]
    written[files.REPORT_HTML].write_text(render_html(table, images, failures))
    return written, failures
