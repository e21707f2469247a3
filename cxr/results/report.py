"""The comparison across backbones: the seed's graphs, ROC curves, confusion matrices, calibration, a leaderboard
with paired tests against the best model, an ensemble, the spread over seeds, and one self-contained report.html
(images embedded) that opens offline and in the KFP UI.

A result folder is what `cxr evaluate` wrote for one backbone and one seed, or a folder holding only failure.json
for a backbone/seed that did not finish: the report is written on the finished ones and lists the others.
"""

from __future__ import annotations

import base64
import html
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on clusters and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from cxr import files, settings  # noqa: E402
from cxr.errors import UserError  # noqa: E402
from cxr.failures import Failure, read_failure  # noqa: E402
from cxr.outputs import OWN_FILES, claim, read_json  # noqa: E402
from cxr.results import calibration, compare  # noqa: E402
from cxr.results.evaluate import (  # noqa: E402
    DEFAULT_THRESHOLD,
    confusion_matrix,
    json_safe,
    patient_bootstrap,
    roc_auc,
    roc_curve,
    summarize,
)

# The seed's test accuracies (GUIDE section 1), from an image-level re-split that leaks patients.
SEED_TEST_ACCURACY = {"MobileNet": 0.9769, "InceptionV3": 0.9556, "Xception": 0.9912, "ResNet50": 0.9960,
                      "VGG16": 0.9944}
ENSEMBLE = "Ensemble"
# The metrics whose spread over seeds the leaderboard shows (column <metric>_std).
SEED_SPREAD = ("test_accuracy", "sensitivity", "specificity", "roc_auc", "brier", "ece")
COLUMNS = ["backbone", "seeds", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss",
           "test_accuracy", "test_accuracy_std", "sensitivity", "sensitivity_std", "specificity", "specificity_std",
           "roc_auc", "roc_auc_std", "roc_auc_ci95", "auc_diff_vs_best", "auc_diff_ci95_low", "auc_diff_ci95_high",
           "delong_p_vs_best", "vs_best", "brier", "brier_std", "brier_ci95", "ece", "ece_std", "ece_ci95",
           "val_threshold", "sensitivity_at_val_threshold", "specificity_at_val_threshold", "learning_time",
           "epochs"]


@dataclass(frozen=True)
class Result:
    """One backbone trained with one seed and evaluated: the folder `cxr evaluate` wrote."""
    backbone: str
    seed: int
    folder: Path
    training: dict  # train_metrics.json
    history: pd.DataFrame  # history.csv
    metrics: dict  # metrics.json
    test: pd.DataFrame  # predictions.csv
    val: pd.DataFrame  # val_predictions.csv


@dataclass(frozen=True)
class Model:
    """One leaderboard row: a backbone over its seeds, or the ensemble of the backbones."""
    name: str
    runs: tuple[Result, ...]  # one per seed, by seed; none for the ensemble
    test: np.ndarray  # P(pneumonia), one row per seed, on the common test films
    metrics: dict | None = None  # the ensemble's metrics (a backbone's are per run)

    @property
    def probabilities(self) -> np.ndarray:
        """Seed-averaged P(pneumonia) per test film: what the paired comparisons compare."""
        return self.test.mean(axis=0)


def failures(result_dirs: Sequence[Path]) -> list[Failure]:
    """The backbones/seeds among `result_dirs` that did not finish, for a caller to log or act on."""
    return [failure for folder in result_dirs if (failure := read_failure(folder)) is not None]


def load_result(folder: Path) -> Result:
    """One evaluated backbone and seed, from the folder `cxr evaluate` wrote."""
    folder = Path(folder)
    for name in (files.TRAIN_METRICS, files.HISTORY, files.METRICS, files.PREDICTIONS, files.VAL_PREDICTIONS):
        if not (folder / name).is_file():
            raise UserError(f"missing {folder / name}: not a result folder of `cxr evaluate` (nor a failure; a "
                            "result from before val_predictions.csv existed needs `cxr evaluate` again)")
    metrics, training = read_json(folder / files.METRICS), read_json(folder / files.TRAIN_METRICS)
    return Result(metrics["backbone"], int(training["settings"]["seed"]), folder, training,
                  pd.read_csv(folder / files.HISTORY), metrics, pd.read_csv(folder / files.PREDICTIONS),
                  pd.read_csv(folder / files.VAL_PREDICTIONS))


def models_of(results: Sequence[Result], samples: int = settings.BOOTSTRAP_SAMPLES) -> tuple[pd.DataFrame, list[Model]]:
    """The common test films and one Model per backbone (its seeds), plus the ensemble when two or more backbones
    finished: the mean P(pneumonia) of the backbones (each seed-averaged), evaluated as a backbone is, its
    threshold chosen on the validation films."""
    test_films, test = compare.align_predictions([r.test for r in results],
                                                 [str(r.folder / files.PREDICTIONS) for r in results])
    val_films, val = compare.align_predictions([r.val for r in results],
                                               [str(r.folder / files.VAL_PREDICTIONS) for r in results])
    models, val_of = [], {}
    for backbone in sorted({r.backbone for r in results}):
        rows = [i for i, r in enumerate(results) if r.backbone == backbone]
        models.append(Model(backbone, tuple(results[i] for i in rows), test[rows]))
        val_of[backbone] = val[rows].mean(axis=0)
    if len(models) > 1:
        ensemble_test = np.mean([m.probabilities for m in models], axis=0)
        ensemble_val = np.mean(list(val_of.values()), axis=0)
        metrics = summarize(test_films.assign(probability=ensemble_test), val_films.assign(probability=ensemble_val),
                            samples)
        models.append(Model(ENSEMBLE, (), ensemble_test[None], json_safe(
            {"backbone": ENSEMBLE, "members": [m.name for m in models], **metrics})))
    return test_films, models


def _number(value) -> float:
    return float("nan") if value is None else float(value)


def _scores(metrics: dict, labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """The test columns of one run (or of the ensemble): its metrics.json and its calibration."""
    at_default, at_validation = metrics["at_default_threshold"], metrics["at_validation_threshold"]
    return {name: _number(value) for name, value in {
        "test_loss": metrics["loss"], "test_accuracy": at_default["accuracy"]["value"],
        "sensitivity": at_default["sensitivity"]["value"], "specificity": at_default["specificity"]["value"],
        "roc_auc": metrics["roc_auc"]["value"],
        "brier": calibration.brier_score(labels, probabilities),
        "ece": calibration.expected_calibration_error(labels, probabilities),
        "val_threshold": metrics["thresholds"]["validation"],
        "sensitivity_at_val_threshold": at_validation["sensitivity"]["value"],
        "specificity_at_val_threshold": at_validation["specificity"]["value"]}.items()}


def _training_scores(training: dict) -> dict[str, float]:
    """Train and validation loss and accuracy at the best epoch, whose weights were kept."""
    best = training["best"]
    return {"train_loss": best["loss"], "train_accuracy": best["accuracy"], "val_loss": best["val_loss"],
            "val_accuracy": best["val_accuracy"], "epochs": training["epochs_run"]}


def seed_mean_intervals(films: pd.DataFrame, model: Model, samples: int = settings.BOOTSTRAP_SAMPLES,
                        ) -> dict[str, list[float]]:
    """Patient-bootstrap intervals of the model's ROC AUC, Brier score and ECE, each the mean over its seeds (as
    the leaderboard's values are), so that an interval says how far the test patients alone move the value."""
    labels = films["label"].to_numpy()

    def statistics(chosen: np.ndarray) -> dict[str, float]:
        y, per_seed = labels[chosen], model.test[:, chosen]
        return {"roc_auc": float(np.mean([roc_auc(y, p) for p in per_seed])),
                "brier": float(np.mean([calibration.brier_score(y, p) for p in per_seed])),
                "ece": float(np.mean([calibration.expected_calibration_error(y, p) for p in per_seed]))}

    return patient_bootstrap(statistics, films["patient_id"].to_numpy(), samples)


def _span(interval: Sequence[float | None]) -> str:
    return "n/a" if any(v is None or np.isnan(v) for v in interval) else f"{interval[0]:.3f}-{interval[1]:.3f}"


def model_row(films: pd.DataFrame, model: Model, samples: int = settings.BOOTSTRAP_SAMPLES) -> dict:
    """The leaderboard row of a model: the mean over its seeds (with the spread of SEED_SPREAD), the intervals of
    seed_mean_intervals; the paired comparison is added by compare_with_best."""
    labels = films["label"].to_numpy()
    if model.runs:
        per_seed = pd.DataFrame([{**_training_scores(run.training), **_scores(run.metrics, labels, probabilities)}
                                 for run, probabilities in zip(model.runs, model.test, strict=True)])
        learning_time = " / ".join(run.training["learning_time"] for run in model.runs)
    else:
        per_seed = pd.DataFrame([_scores(model.metrics, labels, model.probabilities)])
        learning_time = ""
    intervals = seed_mean_intervals(films, model, samples)
    row = {"backbone": model.name, "seeds": len(model.runs) or pd.NA, **per_seed.mean().to_dict(),
           **{f"{name}_std": per_seed[name].std(ddof=1) if len(per_seed) > 1 else float("nan")
              for name in SEED_SPREAD},
           **{f"{name}_ci95": _span(intervals[name]) for name in ("roc_auc", "brier", "ece")},
           "learning_time": learning_time}
    return {column: row.get(column, float("nan")) for column in COLUMNS}


def compare_with_best(films: pd.DataFrame, table: pd.DataFrame, models: dict[str, Model],
                      samples: int = settings.BOOTSTRAP_SAMPLES) -> pd.DataFrame:
    """Fill the paired comparison of every row with the first (best) one: AUC difference with its patient-
    bootstrap interval, DeLong's p, and vs_best: "best", "indistinguishable", "lower" or "higher"."""
    labels, patients = films["label"].to_numpy(), films["patient_id"].to_numpy()
    best = models[table["backbone"].iloc[0]]
    table = table.copy()
    for index, name in table["backbone"].items():
        if name == best.name:
            table.loc[index, ["auc_diff_vs_best", "auc_diff_ci95_low", "auc_diff_ci95_high"]] = 0.0
            table.loc[index, "vs_best"] = "best"
            continue
        probabilities = models[name].probabilities
        difference, interval = compare.paired_auc_difference(labels, probabilities, best.probabilities, patients,
                                                             samples)
        p_value = compare.delong_test(labels, probabilities, best.probabilities)
        table.loc[index, ["auc_diff_vs_best", "auc_diff_ci95_low", "auc_diff_ci95_high", "delong_p_vs_best"]] = [
            difference, *interval, p_value]
        table.loc[index, "vs_best"] = ("indistinguishable" if compare.indistinguishable(p_value, interval)
                                       else "lower" if difference < 0 else "higher")
    return table


def leaderboard(films: pd.DataFrame, models: Sequence[Model], samples: int = settings.BOOTSTRAP_SAMPLES,
                ) -> pd.DataFrame:
    """One row per model, sorted by test ROC AUC (best first), compared with the best."""
    table = pd.DataFrame([model_row(films, model, samples) for model in models], columns=COLUMNS)
    table["seeds"] = table["seeds"].astype("Int64")
    table["vs_best"] = table["vs_best"].astype(object)
    table = table.sort_values("roc_auc", ascending=False, kind="stable").reset_index(drop=True)
    return compare_with_best(films, table, {model.name: model for model in models}, samples)


def _save(figure: plt.Figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_loss_acc(runs: Sequence[Result], path: Path) -> None:
    """Train and validation loss and accuracy per epoch of every seed of one backbone (the seed's section 4)."""
    figure, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in ((loss_axis, "loss"), (acc_axis, "accuracy")):
        for index, run in enumerate(runs):
            seed, color = (f"seed {run.seed} " if len(runs) > 1 else ""), f"C{index}"
            axis.plot(run.history["epoch"], run.history[metric], "o-", color=color, label=f"{seed}train {metric}")
            axis.plot(run.history["epoch"], run.history[f"val_{metric}"], "s--", color=color,
                      label=f"{seed}validation {metric}")
            axis.axvline(run.training["best_epoch"], color=color, linestyle=":", label=f"{seed}best epoch (kept)")
        axis.set(xlabel="epoch", ylabel=metric, title=f"{runs[0].backbone}: {metric}")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    _save(figure, path)


def plot_comparison(models: Sequence[Model], path: Path) -> None:
    """x: learning time, y: accuracy, train / validation / test marked for each run (the seed's section 5)."""
    figure, axis = plt.subplots(figsize=(8, 5))
    markers = {"train": "o", "validation": "s", "test": "^"}
    for index, model in enumerate(m for m in models if m.runs):
        for run in model.runs:
            minutes = run.training["learning_time_seconds"] / 60
            values = {"train": run.training["best"]["accuracy"], "validation": run.training["best"]["val_accuracy"],
                      "test": run.metrics["at_default_threshold"]["accuracy"]["value"]}
            for split, value in values.items():
                axis.scatter(minutes, value, marker=markers[split], color=f"C{index}", s=60)
        axis.annotate(model.name, (minutes, values["test"]), textcoords="offset points", xytext=(6, -4))
    for split, marker in markers.items():
        axis.scatter([], [], marker=marker, color="black", label=split)
    axis.set(xlabel="learning time (minutes)", ylabel="accuracy", title="Backbones: accuracy vs learning time")
    axis.grid(alpha=0.3)
    axis.legend()
    _save(figure, path)


def _label(model: Model) -> str:
    return f"{model.name} (averaged over {len(model.runs)} seeds)" if len(model.runs) > 1 else model.name


def _style(model: Model, index: int) -> dict:
    return {"color": "black", "linestyle": "--"} if not model.runs else {"color": f"C{index}"}


def plot_roc(films: pd.DataFrame, models: Sequence[Model], path: Path) -> None:
    labels = films["label"].to_numpy()
    figure, axis = plt.subplots(figsize=(6, 6))
    for index, model in enumerate(models):
        curve = roc_curve(labels, model.probabilities)
        axis.plot(curve["fpr"], curve["tpr"], label=f"{_label(model)}: AUC {roc_auc(labels, model.probabilities):.3f}",
                  **_style(model, index))
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    axis.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity (true positive rate)",
             title="ROC on the test split")
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right", fontsize="small")
    _save(figure, path)


def plot_confusion(films: pd.DataFrame, models: Sequence[Model], path: Path) -> None:
    labels = films["label"].to_numpy()
    figure, axes = plt.subplots(1, len(models), figsize=(3.2 * len(models), 3.4), squeeze=False)
    for axis, model in zip(axes[0], models, strict=True):
        matrix = confusion_matrix(labels, model.probabilities >= DEFAULT_THRESHOLD)
        axis.imshow(matrix, cmap="Blues")
        for row in range(2):
            for column in range(2):
                axis.text(column, row, str(matrix[row][column]), ha="center", va="center", fontsize=12)
        axis.set(xticks=[0, 1], yticks=[0, 1], xticklabels=settings.CLASS_NAMES, yticklabels=settings.CLASS_NAMES,
                 xlabel="predicted", ylabel="true", title=_label(model))
    _save(figure, path)


def plot_calibration(films: pd.DataFrame, models: Sequence[Model], path: Path) -> None:
    """Reliability diagram: observed pneumonia rate against mean predicted P(pneumonia) per bin, and how many
    films each bin holds (a bin of three films says little)."""
    labels = films["label"].to_numpy()
    figure, (diagram, counts) = plt.subplots(1, 2, figsize=(11, 5))
    for index, model in enumerate(models):
        table = calibration.reliability(labels, model.probabilities)
        filled = table[table["films"] > 0]
        ece = calibration.expected_calibration_error(labels, model.probabilities)
        diagram.plot(filled["predicted"], filled["observed"], marker="o", label=f"{_label(model)}: ECE {ece:.3f}",
                     **_style(model, index))
        counts.stairs(table["films"], np.r_[table["low"], 1.0], **_style(model, index))
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


def _cell(value) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def verdict(table: pd.DataFrame) -> str:
    """One sentence: which models cannot be told apart from the best."""
    if table.empty:
        return "No backbone finished: nothing to compare."
    best, tied = table["backbone"].iloc[0], table.loc[table["vs_best"] == "indistinguishable", "backbone"]
    if len(table) == 1:
        return f"Only {best} finished: nothing to compare it with."
    if tied.empty:
        return f"Every other model's ROC AUC is told apart from the best one's ({best})."
    return (f"Cannot be told apart from the best ({best}) on these test films (DeLong p >= "
            f"{settings.SIGNIFICANCE} or the difference's interval reaches across 0): {', '.join(tied)}.")


def to_markdown(table: pd.DataFrame, missing: Sequence[Failure] = ()) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    lines += ["", verdict(table)]
    lines += [f"Missing: {failure.line()}" for failure in missing]
    return "\n".join(lines) + "\n"


def embedded_png(path: Path) -> str:
    """A PNG as an <img> with the data inline, so the page stands alone (the KFP UI shows one file)."""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def render_html(table: pd.DataFrame, images: Sequence[Path], missing: Sequence[Failure] = (),
                sections: str = "") -> str:
    """The whole report; `sections`: more HTML after the graphs (where each backbone looks, the model card)."""
    seed_rows = "".join(f"<tr><td>{name}</td><td>{value:.4f}</td></tr>" for name, value in SEED_TEST_ACCURACY.items())
    missing_section = "" if not missing else (
        '<section id="missing"><h2>Missing</h2><p>These did not finish; everything below is computed without them.'
        "</p><ul>" + "".join(f"<li>{html.escape(failure.line())}</li>" for failure in missing) + "</ul></section>")
    board = table.map(_cell).to_html(index=False) if not table.empty else ""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Chest X-ray backbone benchmark</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:4px 6px;text-align:right}}
#missing{{border:2px solid #c00;background:#fee;padding:0 1em;margin:1em 0}}
img{{max-width:100%;margin:1em 0}}</style></head><body>
<h1>Chest X-ray pneumonia: backbone comparison</h1>
{missing_section}
<p><strong>{html.escape(verdict(table))}</strong></p>
<p>Sorted by test ROC AUC. Test accuracy, sensitivity and specificity at threshold 0.5; the validation threshold
maximises sensitivity + specificity on validation data and is never chosen on test. Intervals: 95 % bootstrap
over test patients. Train and validation columns are at the best epoch, whose weights were kept.
With several seeds a row is the mean over them and <code>_std</code> their standard deviation.
<code>auc_diff_vs_best</code>: this model's ROC AUC minus the best one's on the same films (seed-averaged
probabilities), with a 95 % interval that resamples the same patients for both; <code>delong_p_vs_best</code>:
DeLong's test of no difference; <code>vs_best</code> says <em>indistinguishable</em> when p &ge;
{settings.SIGNIFICANCE} or the interval reaches across 0. <code>brier</code>: mean squared error of P(pneumonia) (0 is
perfect, 0.25 a constant 0.5); <code>ece</code>: expected calibration error, the average gap between the predicted
probability and the observed share of pneumonia ({settings.CALIBRATION_BINS} bins). {ENSEMBLE}: the mean
probability of the finished backbones, evaluated like one.</p>
{board}
{"".join(embedded_png(path) for path in images)}
{sections}
<h2>For reference: the seed's reported test accuracy</h2>
<p>From an image-level re-split that puts one patient's films on both sides (GUIDE section 1): not comparable
with a patient-level split; published results on the official test split are 93-96 %.</p>
<table><tr><th>backbone</th><th>seed test accuracy</th></tr>{seed_rows}</table>
</body></html>
"""


def _refuse_duplicates(results: Sequence[Result]) -> None:
    seen: dict[tuple[str, int], Path] = {}
    for result in results:
        key = (result.backbone, result.seed)
        if key in seen:
            raise UserError(f"two result folders hold the same backbone and seed ({result.backbone}, seed "
                            f"{result.seed}): {seen[key]} and {result.folder}")
        seen[key] = result.folder


def write_report(result_dirs: Sequence[Path], out: Path, samples: int = settings.BOOTSTRAP_SAMPLES,
                 explain_dirs: Sequence[Path] = (), data_dir: Path | None = None,
                 ) -> tuple[dict[str, Path], list[Failure]]:
    """Write every graph, the leaderboard (csv, md), the ensemble's metrics and report.html into `out`; return file
    name -> path, and the failed trainings: folders holding failure.json are listed as missing; with none
    finished, the leaderboard and report.html say so. With `explain_dirs` (of `cxr explain`) the report shows
    where each backbone looks; with `data_dir` (of `cxr preprocess`) it ends with a model card."""
    if not result_dirs:
        raise UserError("no result folders given")
    missing = failures(result_dirs)
    results = sorted((load_result(d) for d in map(Path, result_dirs) if read_failure(d) is None),
                     key=lambda r: (r.backbone, r.seed))
    _refuse_duplicates(results)
    out = Path(out)
    explain_dirs = sorted(Path(d) for d in explain_dirs)
    with claim(out, "report", {"results": sorted(str(Path(d).resolve()) for d in result_dirs), "samples": samples,
                               "explanations": [str(d.resolve()) for d in explain_dirs],
                               "data": str(Path(data_dir).resolve()) if data_dir else None}) as output:
        if output.finished and (out / files.REPORT_HTML).is_file():
            print(f"report: {out} already holds this report; reusing it", file=sys.stderr)
            return {p.name: p for p in sorted(out.iterdir()) if p.name not in OWN_FILES}, missing
        written = _write(results, missing, out, samples, explain_dirs, data_dir)
        output.finish()
    return written, missing


def _sections(results: list[Result], table: pd.DataFrame, explain_dirs: Sequence[Path], data_dir: Path | None,
              out: Path) -> str:
    """Where each backbone looks (Grad-CAM, when explanations were made) and the model card of the best single
    backbone (when the data folder is known: its stats.json holds the splits)."""
    from cxr.results.explain import explanations_html
    from cxr.results.model_card import model_card_html

    html_parts = [explanations_html(explain_dirs, out)] if explain_dirs else []
    rows = [row for row in table.to_dict("records") if row["backbone"] != ENSEMBLE]
    if data_dir is not None and rows:
        summaries = [read_json(Path(d) / files.EXPLAIN_SUMMARY) for d in explain_dirs]
        metrics = {}
        for result in results:  # the first seed's metrics stand for the backbone's thresholds and intervals
            metrics.setdefault(result.backbone, result.metrics)
        manifest = Path(data_dir) / files.MANIFEST
        html_parts.append(model_card_html(
            read_json(Path(data_dir) / files.STATS), rows, metrics, summaries,
            synthetic=any(s.get("pointing_game") for s in summaries),  # only `cxr synth` draws lesion boxes
            manifest=pd.read_csv(manifest) if manifest.is_file() else None))
    return "\n".join(html_parts)


def _write(results: list[Result], missing: list[Failure], out: Path, samples: int, explain_dirs: Sequence[Path] = (),
           data_dir: Path | None = None) -> dict[str, Path]:
    written = {name: out / name for name in (files.LEADERBOARD_CSV, files.LEADERBOARD_MD, files.REPORT_HTML)}
    table, images = pd.DataFrame(columns=COLUMNS), []
    if results:
        films, models = models_of(results, samples)
        table = leaderboard(films, models, samples)
        backbones = [m for m in models if m.runs]
        written.update({name: out / name for name in [files.loss_acc_graph(m.name) for m in backbones] + [
            files.COMPARISON_PLOT, files.ROC_PLOT, files.CALIBRATION_PLOT, files.CONFUSION_PLOT]})
        for model in backbones:
            plot_loss_acc(model.runs, written[files.loss_acc_graph(model.name)])
        plot_comparison(models, written[files.COMPARISON_PLOT])
        plot_roc(films, models, written[files.ROC_PLOT])
        plot_calibration(films, models, written[files.CALIBRATION_PLOT])
        plot_confusion(films, models, written[files.CONFUSION_PLOT])
        images = [written[name] for name in (files.COMPARISON_PLOT, files.ROC_PLOT, files.CALIBRATION_PLOT,
                                             files.CONFUSION_PLOT)]
        images += [written[files.loss_acc_graph(name)] for name in table["backbone"] if name != ENSEMBLE]
        ensemble = [m for m in models if not m.runs]
        if ensemble:
            written[files.ENSEMBLE_METRICS] = out / files.ENSEMBLE_METRICS
            written[files.ENSEMBLE_METRICS].write_text(json.dumps(ensemble[0].metrics, indent=2, allow_nan=False))
    table.to_csv(written[files.LEADERBOARD_CSV], index=False)
    written[files.LEADERBOARD_MD].write_text(to_markdown(table, missing))
    sections = _sections(results, table, explain_dirs, data_dir, out) if results else ""
    if (out / files.GRADCAM_COMPARISON).is_file():
        written[files.GRADCAM_COMPARISON] = out / files.GRADCAM_COMPARISON
    written[files.REPORT_HTML].write_text(render_html(table, images, missing, sections))
    return written
