"""Every figure of the study, drawn with matplotlib (no display: Agg): the seed's loss/accuracy and
accuracy-vs-learning-time graphs, ROC curves, confusion matrices, the reliability diagram, the learning-rate
search, and the Grad-CAM panels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on clusters and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from cxr import settings  # noqa: E402
from cxr.results import calibration  # noqa: E402
from cxr.results.collect import Contender, Result, row_label  # noqa: E402
from cxr.results.metrics import confusion_matrix, roc_auc, roc_curve  # noqa: E402
from cxr.training.plan import ROW  # noqa: E402

SPLIT_MARKERS = {"train": "o", "validation": "s", "test": "^"}


def colours(rows: Sequence[Contender]) -> dict[str, str]:
    """One colour per backbone, shared by its regimes (which the line or marker style tells apart)."""
    return {backbone: f"C{index}" for index, backbone in enumerate(dict.fromkeys(c.backbone for c in rows if c.runs))}


def _save(figure: plt.Figure, path: Path, dpi: int = 100) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    plt.close(figure)


def loss_acc(runs: Sequence[Result], name: str, path: Path) -> None:
    """Train and validation loss and accuracy per epoch of every seed of one contender (the seed's section 4)."""
    figure, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in ((loss_axis, "loss"), (acc_axis, "accuracy")):
        for index, run in enumerate(runs):
            seed, color = (f"seed {run.seed} " if len(runs) > 1 else ""), f"C{index}"
            axis.plot(run.history["epoch"], run.history[metric], "o-", color=color, label=f"{seed}train {metric}")
            axis.plot(run.history["epoch"], run.history[f"val_{metric}"], "s--", color=color,
                      label=f"{seed}validation {metric}")
            axis.axvline(run.training["best_epoch"], color=color, linestyle=":", label=f"{seed}best epoch (kept)")
        axis.set(xlabel="epoch", ylabel=metric, title=f"{name}: {metric}")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    _save(figure, path)


def accuracy_vs_time(rows: Sequence[Contender], path: Path) -> None:
    """x: learning time (a frozen run's feature extraction included), y: accuracy, train / validation / test
    marked for each run (the seed's section 5); one colour per backbone, hollow markers for a frozen one. The
    contenders are named in a legend beside the axes, not next to their points: runs of similar time and accuracy
    would draw their names over each other."""
    figure, axis = plt.subplots(figsize=(11, 5.5))
    trained = [c for c in rows if c.runs]
    colour = colours(rows)
    contenders = []
    for contender in trained:
        tint = colour[contender.backbone]
        style = ({"facecolors": "none", "edgecolors": tint, "linewidths": 1.5} if contender.regime == "frozen"
                 else {"color": tint})
        for run in contender.runs:
            values = {"train": run.training["best"]["accuracy"], "validation": run.training["best"]["val_accuracy"],
                      "test": run.metrics["at_default_threshold"]["accuracy"]["value"]}
            for split, value in values.items():
                axis.scatter(run.learning_seconds / 60, value, marker=SPLIT_MARKERS[split], s=60, **style)
        contenders.append(Line2D([], [], marker="o", linestyle="", color=tint, label=contender.name,
                                 markerfacecolor="none" if contender.regime == "frozen" else tint))
    handles = [Line2D([], [], marker=marker, color="black", linestyle="", label=split)
               for split, marker in SPLIT_MARKERS.items()]
    regimes = {c.regime for c in trained}
    if len(regimes) > 1 or "frozen" in regimes:
        handles += [Line2D([], [], marker="o", color="grey", linestyle="", label="finetune (filled)"),
                    Line2D([], [], marker="o", color="grey", markerfacecolor="none", linestyle="",
                           label="frozen (hollow; features included)")]
    axis.set(xlabel="learning time (minutes)", ylabel="accuracy", title="Backbones: accuracy vs learning time")
    axis.margins(x=0.1)
    axis.grid(alpha=0.3)
    axis.add_artist(axis.legend(handles=contenders, fontsize="small", title="model", loc="upper left",
                                bbox_to_anchor=(1.02, 1)))
    axis.legend(handles=handles, fontsize="small", loc="lower left", bbox_to_anchor=(1.02, 0))
    _save(figure, path)


def tuning(table: pd.DataFrame, path: Path) -> None:
    """Validation ROC AUC (the mean over seeds) against the learning rate, one line per leaderboard row, the chosen
    candidate circled; `table` is cxr.results.tuning.candidates()."""
    figure, axis = plt.subplots(figsize=(8, 5))
    for index, (key, candidates) in enumerate(table.groupby(list(ROW), sort=True)):
        colour = f"C{index}"
        axis.plot(candidates["learning_rate"], candidates["val_roc_auc"], "o-", color=colour, label=row_label(key))
        chosen = candidates[candidates["chosen"]]
        axis.scatter(chosen["learning_rate"], chosen["val_roc_auc"], s=220, facecolors="none", edgecolors=colour,
                     linewidths=2)
    axis.scatter([], [], s=220, facecolors="none", edgecolors="black", linewidths=2, label="chosen (on validation)")
    axis.set_xscale("log")
    axis.set(xlabel="learning rate", ylabel="validation ROC AUC (mean over seeds)",
             title="Learning rate search: each row's candidates")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")
    _save(figure, path)


def _legend_name(contender: Contender) -> str:
    runs = len(contender.runs)
    return f"{contender.name} (averaged over {runs} seeds)" if runs > 1 else contender.name


def _style(contender: Contender, colour: dict[str, str]) -> dict:
    """The ensemble dashed black; a backbone in its colour, dotted when frozen."""
    if not contender.runs:
        return {"color": "black", "linestyle": "--"}
    return {"color": colour[contender.backbone], "linestyle": ":" if contender.regime == "frozen" else "-"}


def roc(films: pd.DataFrame, rows: Sequence[Contender], path: Path) -> None:
    labels = films["label"].to_numpy()
    figure, axis = plt.subplots(figsize=(6, 6))
    colour = colours(rows)
    for contender in rows:
        curve = roc_curve(labels, contender.probabilities)
        axis.plot(curve["fpr"], curve["tpr"], **_style(contender, colour),
                  label=f"{_legend_name(contender)}: AUC {roc_auc(labels, contender.probabilities):.3f}")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    axis.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity (true positive rate)",
             title="ROC on the test split")
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right", fontsize="small")
    _save(figure, path)


def confusion(films: pd.DataFrame, rows: Sequence[Contender], path: Path) -> None:
    labels = films["label"].to_numpy()
    figure, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.4), squeeze=False)
    for axis, contender in zip(axes[0], rows, strict=True):
        matrix = confusion_matrix(labels, contender.probabilities >= settings.DEFAULT_THRESHOLD)
        axis.imshow(matrix, cmap="Blues")
        for row in range(2):
            for column in range(2):
                axis.text(column, row, str(matrix[row][column]), ha="center", va="center", fontsize=12)
        axis.set(xticks=[0, 1], yticks=[0, 1], xticklabels=settings.CLASS_NAMES, yticklabels=settings.CLASS_NAMES,
                 xlabel="predicted", ylabel="true", title=_legend_name(contender))
    _save(figure, path)


def reliability(films: pd.DataFrame, rows: Sequence[Contender], path: Path) -> None:
    """Reliability diagram: observed pneumonia rate against mean predicted P(pneumonia) per bin, and how many
    films each bin holds (a bin of three films says little)."""
    labels = films["label"].to_numpy()
    figure, (diagram, counts) = plt.subplots(1, 2, figsize=(11, 5))
    colour = colours(rows)
    for contender in rows:
        table = calibration.reliability(labels, contender.probabilities)
        filled = table[table["films"] > 0]
        ece = calibration.expected_calibration_error(labels, contender.probabilities)
        diagram.plot(filled["predicted"], filled["observed"], marker="o", **_style(contender, colour),
                     label=f"{_legend_name(contender)}: ECE {ece:.3f}")
        counts.stairs(table["films"], np.r_[table["low"], 1.0], **_style(contender, colour))
    diagram.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    diagram.set(xlabel="mean predicted P(pneumonia) in the bin", ylabel="observed share of pneumonia films",
                title=f"Reliability ({settings.CALIBRATION_BINS} equal-width bins, test split)", xlim=(0, 1),
                ylim=(0, 1))
    counts.set(xlabel="predicted P(pneumonia)", ylabel="films in the bin", title="Films per bin",
               xlim=(0, 1))
    for axis in (diagram, counts):
        axis.grid(alpha=0.3)
    diagram.legend(loc="lower right", fontsize="small")
    _save(figure, path)


# --- Grad-CAM ----------------------------------------------------------------------------------------------

def _overlay(axis, film: np.ndarray, heatmap: np.ndarray | None, boxes: np.ndarray | None = None,
             point: np.ndarray | None = None) -> None:
    axis.imshow(film, cmap="gray", vmin=0, vmax=255)
    if heatmap is not None:
        axis.imshow(heatmap, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    for x_min, y_min, x_max, y_max in boxes if boxes is not None else []:
        # imshow puts pixel i's centre at i: continuous pixel edges sit half a pixel to the left and up.
        axis.add_patch(Rectangle((x_min - 0.5, y_min - 0.5), x_max - x_min, y_max - y_min, fill=False,
                                 edgecolor="white", linewidth=1))
    if point is not None:
        axis.plot(point[0] - 0.5, point[1] - 0.5, marker="+", color="white", markersize=10, markeredgewidth=2)
    axis.set_xticks([])
    axis.set_yticks([])


def gradcam_panel(backbone: str, films: np.ndarray, heatmaps: np.ndarray, table: pd.DataFrame,
                  boxes: Mapping[str, np.ndarray], out: Path) -> None:
    """One column per film: the film, then its heatmap over it with the lesion boxes (white) and the map's
    maximum (+); the title gives the outcome, P(pneumonia) and the true label."""
    count = len(table)
    figure, axes = plt.subplots(2, count, figsize=(2.2 * count, 5), squeeze=False)
    for column, row in enumerate(table.itertuples()):
        axes[0, column].set_title(f"{row.outcome}  P={row.probability:.2f}\n"
                                  f"label {settings.CLASS_NAMES[int(row.label)]}", fontsize=8)
        _overlay(axes[0, column], films[column], None)
        _overlay(axes[1, column], films[column], heatmaps[column], boxes.get(row.source),
                 np.array([row.point_x, row.point_y]))
    axes[0, 0].set_ylabel("film", fontsize=9)
    axes[1, 0].set_ylabel("Grad-CAM", fontsize=9)
    figure.suptitle(f"{backbone}: where the evidence for pneumonia lies (test films)", fontsize=10)
    _save(figure, out, dpi=110)


def gradcam_comparison(runs: Sequence[tuple[str, pd.DataFrame, np.ndarray, np.ndarray]], common: Sequence[str],
                       out: Path) -> None:
    """The `common` films (rows) under each backbone's heatmap (columns); `runs`: (backbone, its films table
    indexed by source, heatmaps, films) per backbone."""
    figure, axes = plt.subplots(len(common), len(runs), figsize=(2.2 * len(runs), 2.3 * len(common)),
                                squeeze=False)
    for column, (backbone, table, heatmaps, films) in enumerate(runs):
        axes[0, column].set_title(backbone, fontsize=10)
        for row, source in enumerate(common):
            info, index = table.loc[source], table.index.get_loc(source)
            _overlay(axes[row, column], films[index], heatmaps[index], None,
                     np.array([info["point_x"], info["point_y"]]))
            axes[row, column].set_xlabel(f"{info['outcome']}  P={info['probability']:.2f}", fontsize=8)
            if column == 0:
                axes[row, column].set_ylabel(f"{settings.CLASS_NAMES[int(info['label'])]}\n{Path(source).name}",
                                             fontsize=7)
    _save(figure, out, dpi=110)
