"""The leaderboard: one row per contender (backbone, regime and head at its chosen learning rate over its seeds, or
the ensemble), sorted by test ROC AUC, each compared with the best one by a paired test; and the compact view of it
that leads the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import numpy as np
import pandas as pd

from cxr import settings
from cxr.results import calibration, compare
from cxr.results.collect import ENSEMBLE, Contender, label
from cxr.results.metrics import patient_bootstrap, roc_auc_per_resample, threshold_metrics_per_resample

# The metrics whose spread over seeds the leaderboard shows (column <metric>_std).
SEED_SPREAD = ("test_accuracy", "sensitivity", "specificity", "roc_auc", "brier", "ece")
COLUMNS = ["backbone", "regime", "head", "learning_rate", "candidates", "seeds", "train_loss", "train_accuracy",
           "val_loss", "val_accuracy", "test_loss", "test_accuracy", "test_accuracy_std", "sensitivity",
           "sensitivity_std", "specificity", "specificity_std", "roc_auc", "roc_auc_std", "roc_auc_ci95",
           "auc_diff_vs_best", "auc_diff_ci95_low", "auc_diff_ci95_high", "delong_p_vs_best", "vs_best", "brier",
           "brier_std", "brier_ci95", "ece", "ece_std", "ece_ci95", "val_threshold", "sensitivity_at_val_threshold",
           "sensitivity_at_val_threshold_ci95",
           "specificity_at_val_threshold", "specificity_at_val_threshold_ci95", "learning_time",
           "learning_seconds", "epochs"]
# The columns that count something: whole numbers, shown without decimals (epochs is a mean over seeds).
COUNTS = ("candidates", "seeds", "epochs")
# The compact table that leads the report (it fits a 1,300 px window): its headings and the full table's columns
# each is made of (a value and, where there is one, its interval).
COMPACT = {"backbone": ("backbone", None), "regime": ("regime", None), "head": ("head", None),
           "learning rate": ("learning_rate", None),
           "ROC AUC (95 % CI)": ("roc_auc", "roc_auc_ci95"),
           "sensitivity at val. threshold": ("sensitivity_at_val_threshold", "sensitivity_at_val_threshold_ci95"),
           "specificity at val. threshold": ("specificity_at_val_threshold", "specificity_at_val_threshold_ci95"),
           "vs best": ("vs_best", None), "Brier": ("brier", None), "learning time": ("learning_time", None)}
# Marks a frozen row's learning time, which includes its feature extraction (the footnote says so).
FEATURES_MARK = "\u2020"  # a dagger: an asterisk would start a Markdown list


def row_name(row: pd.Series | dict) -> str:
    """The contender a leaderboard row stands for (`ResNet50 · frozen · linear`)."""
    return label(row["backbone"], row["regime"], row["head"])


def duration(seconds: float) -> str:
    """H:MM:SS, as the seed reports its learning times."""
    return str(timedelta(seconds=round(seconds)))


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


def _thresholds(contender: Contender) -> list[float]:
    """Each seed's validation threshold (the ensemble's own for the ensemble)."""
    if contender.runs:
        return [run.metrics["thresholds"]["validation"] for run in contender.runs]
    return [contender.metrics["thresholds"]["validation"]]


def seed_mean_intervals(films: pd.DataFrame, contender: Contender, samples: int = settings.BOOTSTRAP_SAMPLES,
                        ) -> dict[str, list[float]]:
    """Patient-bootstrap intervals of the contender's ROC AUC, Brier score, ECE and sensitivity and specificity
    at each seed's validation threshold, each the mean over its seeds (as the leaderboard's values are), so that
    an interval says how far the test patients alone move the value."""
    labels = films["label"].to_numpy()
    thresholds = _thresholds(contender)

    def statistics(counts: np.ndarray) -> dict[str, np.ndarray]:
        def seed_mean(statistic) -> np.ndarray:
            return np.mean([statistic(labels, p, counts) for p in contender.test], axis=0)

        at = [threshold_metrics_per_resample(labels, p, t, counts)
              for p, t in zip(contender.test, thresholds, strict=True)]
        return {"roc_auc": seed_mean(roc_auc_per_resample),
                "brier": seed_mean(calibration.brier_score_per_resample),
                "ece": seed_mean(calibration.expected_calibration_error_per_resample),
                "sensitivity_at_val_threshold": np.mean([m["sensitivity"] for m in at], axis=0),
                "specificity_at_val_threshold": np.mean([m["specificity"] for m in at], axis=0)}

    return patient_bootstrap(statistics, films["patient_id"].to_numpy(), samples)


def _span(interval: Sequence[float | None]) -> str:
    return "n/a" if any(v is None or np.isnan(v) for v in interval) else f"{interval[0]:.3f}-{interval[1]:.3f}"


def contender_row(films: pd.DataFrame, contender: Contender, samples: int = settings.BOOTSTRAP_SAMPLES) -> dict:
    """The leaderboard row of a contender: the mean over its seeds (with the spread of SEED_SPREAD), the
    intervals of seed_mean_intervals; the paired comparison is added by compare_with_best. A frozen row's
    learning time includes its feature extraction."""
    labels = films["label"].to_numpy()
    if contender.runs:
        per_seed = pd.DataFrame([{**_training_scores(run.training), **_scores(run.metrics, labels, probabilities),
                                  "learning_seconds": run.learning_seconds}
                                 for run, probabilities in zip(contender.runs, contender.test, strict=True)])
        learning_time = " / ".join(duration(run.learning_seconds) for run in contender.runs)
    else:
        per_seed = pd.DataFrame([_scores(contender.metrics, labels, contender.probabilities)])
        learning_time = ""
    intervals = seed_mean_intervals(films, contender, samples)
    row = {"backbone": contender.backbone, "regime": contender.regime, "head": contender.head,
           "learning_rate": contender.learning_rate, "candidates": contender.candidates,
           "seeds": len(contender.runs) or pd.NA,
           **per_seed.mean().to_dict(),
           **{f"{name}_std": per_seed[name].std(ddof=1) if len(per_seed) > 1 else float("nan")
              for name in SEED_SPREAD},
           **{f"{name}_ci95": _span(interval) for name, interval in intervals.items()},
           "learning_time": learning_time}
    return {column: row.get(column, float("nan")) for column in COLUMNS}


def compare_with_best(films: pd.DataFrame, table: pd.DataFrame, by_name: dict[str, Contender],
                      samples: int = settings.BOOTSTRAP_SAMPLES) -> pd.DataFrame:
    """Fill the paired comparison of every row with the first (best) one: AUC difference with its patient-
    bootstrap interval, DeLong's p, and vs_best: "best", "indistinguishable", "lower" or "higher"."""
    labels, patients = films["label"].to_numpy(), films["patient_id"].to_numpy()
    best = by_name[row_name(table.iloc[0])]
    table = table.copy()
    for index, row in table.iterrows():
        name = row_name(row)
        if name == best.name:
            table.loc[index, ["auc_diff_vs_best", "auc_diff_ci95_low", "auc_diff_ci95_high"]] = 0.0
            table.loc[index, "vs_best"] = "best"
            continue
        probabilities = by_name[name].probabilities
        difference, interval = compare.paired_auc_difference(labels, probabilities, best.probabilities, patients,
                                                             samples)
        p_value = compare.delong_test(labels, probabilities, best.probabilities)
        table.loc[index, ["auc_diff_vs_best", "auc_diff_ci95_low", "auc_diff_ci95_high", "delong_p_vs_best"]] = [
            difference, *interval, p_value]
        table.loc[index, "vs_best"] = ("indistinguishable" if compare.indistinguishable(p_value, interval)
                                       else "lower" if difference < 0 else "higher")
    return table


def leaderboard(films: pd.DataFrame, rows: Sequence[Contender], samples: int = settings.BOOTSTRAP_SAMPLES,
                ) -> pd.DataFrame:
    """One row per contender, sorted by test ROC AUC (best first), compared with the best."""
    table = pd.DataFrame([contender_row(films, contender, samples) for contender in rows], columns=COLUMNS)
    table[["seeds", "candidates"]] = table[["seeds", "candidates"]].astype("Int64")
    table["learning_rate"] = table["learning_rate"].astype(float)  # the ensemble's None: NaN
    table["vs_best"] = table["vs_best"].astype(object)
    table = table.sort_values("roc_auc", ascending=False, kind="stable").reset_index(drop=True)
    return compare_with_best(films, table, {contender.name: contender for contender in rows}, samples)


def comparison_summary(table: pd.DataFrame) -> str:
    """One sentence: which contenders cannot be told apart from the best."""
    if table.empty:
        return "No backbone finished: nothing to compare."
    names = table.apply(row_name, axis=1)
    best, tied = names.iloc[0], names[table["vs_best"] == "indistinguishable"]
    if len(table) == 1:
        return f"Only {best} finished: nothing to compare it with."
    if tied.empty:
        return f"Every other model's ROC AUC is told apart from the best one's ({best})."
    return (f"Cannot be told apart from the best ({best}) on these test films (DeLong p >= "
            f"{settings.SIGNIFICANCE} or the difference's interval reaches across 0): {', '.join(tied)}.")


def has_frozen(table: pd.DataFrame) -> bool:
    """Whether a row's learning time includes a feature extraction (the footnote is then needed)."""
    return bool((table["regime"] == "frozen").any()) if not table.empty else False


def cell(value, decimals: int = 4) -> str:
    """A table cell as text: a number with `decimals` decimals, nothing for an undefined value."""
    if value is None or pd.isna(value):
        return ""
    return f"{value:.{decimals}f}" if isinstance(value, float) else str(value)


def count_cell(value) -> str:
    """A count's cell (seeds, epochs): a whole number as one (4, not 4.0000); a mean over seeds that is not whole
    with one decimal; nothing for an undefined value (the ensemble has no epochs)."""
    if value is None or pd.isna(value):
        return ""
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def rate(value) -> str:
    """A learning rate as text (1e-05, 0.001); nothing for a row without one (the ensemble, a fitted probe)."""
    return "" if value is None or pd.isna(value) else f"{value:g}"


def cells(table: pd.DataFrame, decimals: int = 4) -> pd.DataFrame:
    """Every cell of a leaderboard (or of some of its columns) as text: counts as whole numbers, learning rates as
    rate writes them, other numbers with `decimals` decimals, undefined values empty."""
    def as_text(column: pd.Series) -> pd.Series:
        if column.name in COUNTS:
            return column.map(count_cell)
        if column.name == "learning_rate":
            return column.map(rate)
        return column.map(lambda value: cell(value, decimals))

    return table.apply(as_text)


def _with_interval(value, interval) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    return f"{value:.3f}" + (f" ({interval})" if isinstance(interval, str) and interval != "n/a" else "")


def compact(table: pd.DataFrame) -> pd.DataFrame:
    """The leading table, every cell text: backbone, regime, the chosen learning rate, ROC AUC, sensitivity and
    specificity at the validation threshold with their 95 % intervals, vs_best, Brier and learning time (a frozen
    row's marked: it includes the feature extraction)."""
    rows = []
    for _, row in table.iterrows():
        cells = {}
        for heading, (column, interval) in COMPACT.items():
            value = row[column]
            if interval is not None:
                cells[heading] = _with_interval(value, row[interval])
            elif column == "brier":
                cells[heading] = "" if pd.isna(value) else f"{value:.3f}"
            elif column == "learning_rate":
                cells[heading] = rate(value)
            else:
                cells[heading] = cell(value)
        if row["regime"] == "frozen" and cells["learning time"]:
            cells["learning time"] += f" {FEATURES_MARK}"
        rows.append(cells)
    return pd.DataFrame(rows, columns=list(COMPACT))


def is_ensemble(row: pd.Series | dict) -> bool:
    return row["backbone"] == ENSEMBLE
