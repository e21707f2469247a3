"""The metric functions of the study: confusion matrix, threshold metrics, ROC curve and AUC, the log loss, the
patient bootstrap and the summary of one model's test predictions that metrics.json holds.

Pure functions of labels (PNEUMONIA = 1) and probabilities; nothing here reads or writes a file. With 62.5 %
pneumonia in the official test split, "always pneumonia" scores 62.5 % accuracy: accuracy alone says little, so
sensitivity, specificity and ROC AUC come beside it, each with a 95 % interval, at 0.5 and at a threshold chosen
on validation (never on test).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd

from cxr import settings

# Keras' clipping in binary cross-entropy (keras.config.epsilon()), so that our test loss matches model.evaluate's.
KERAS_EPSILON = 1e-7
# Bootstrap resamples computed together: a block's counts, [100, films], stay small whatever the test set's size.
_RESAMPLES_AT_ONCE = 100


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """[[TN, FP], [FN, TP]]: rows are the true class (NORMAL, PNEUMONIA), columns the predicted one."""
    labels, predicted = np.asarray(labels, bool), np.asarray(predicted, bool)
    return np.array([[np.sum(~labels & ~predicted), np.sum(~labels & predicted)],
                     [np.sum(labels & ~predicted), np.sum(labels & predicted)]])


def _ratios(numerators: np.ndarray, denominators: np.ndarray) -> np.ndarray:
    """numerators / denominators, NaN where a denominator is 0 (a metric undefined for these films)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominators > 0, numerators / denominators, np.nan)


def threshold_metrics_per_resample(labels: np.ndarray, probabilities: np.ndarray, threshold: float,
                                   counts: np.ndarray) -> dict[str, np.ndarray]:
    """threshold_metrics of each resample of the films: `counts` [resamples, films] says how many times each film
    was drawn into each. Each metric is one value per resample."""
    labels, predicted = np.asarray(labels, bool), np.asarray(probabilities) >= threshold
    tp, fp = counts @ (labels & predicted), counts @ (~labels & predicted)
    fn, tn = counts @ (labels & ~predicted), counts @ (~labels & ~predicted)
    return {
        "accuracy": _ratios(tp + tn, tn + fp + fn + tp),
        "precision": _ratios(tp, tp + fp),
        "sensitivity": _ratios(tp, tp + fn),
        "specificity": _ratios(tn, tn + fp),
        "f1": _ratios(2 * tp, 2 * tp + fp + fn),
    }


def threshold_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy, precision, sensitivity (recall of pneumonia), specificity and F1 when P >= threshold."""
    once = np.ones((1, len(labels)))
    return {name: float(values[0])
            for name, values in threshold_metrics_per_resample(labels, probabilities, threshold, once).items()}


def roc_auc_per_resample(labels: np.ndarray, probabilities: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The ROC AUC of each resample of the films (`counts` as in threshold_metrics_per_resample): the
    Mann-Whitney U of the drawn films, ties counted half, from one sort of the probabilities; NaN for a resample
    with a single class."""
    labels, probabilities = np.asarray(labels, bool), np.asarray(probabilities, float)
    order = np.argsort(probabilities, kind="mergesort")
    scores, positive, counts = probabilities[order], labels[order], counts[:, order]
    ties = np.r_[0, np.flatnonzero(np.diff(scores)) + 1]  # the first film of each run of equal probabilities
    positives = np.add.reduceat(counts * positive, ties, axis=1)  # drawn films per probability and class
    negatives = np.add.reduceat(counts * ~positive, ties, axis=1)
    below = np.cumsum(negatives, axis=1) - negatives  # negatives with a lower probability
    pairs = positives.sum(axis=1) * negatives.sum(axis=1)
    return _ratios((positives * (below + negatives / 2)).sum(axis=1), pairs)


def roc_auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney U), ties counted half; NaN with a single class."""
    if not len(labels):
        return float("nan")
    return float(roc_auc_per_resample(labels, probabilities, np.ones((1, len(labels))))[0])


def roc_curve(labels: np.ndarray, probabilities: np.ndarray) -> pd.DataFrame:
    """Columns threshold, fpr, tpr, from (0, 0) to (1, 1); every threshold finite (the KFP UI needs that)."""
    labels, probabilities = np.asarray(labels, bool), np.asarray(probabilities, float)
    order = np.argsort(-probabilities, kind="mergesort")
    scores, truth = probabilities[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    true_positives = np.cumsum(truth)[last_of_tie]
    false_positives = last_of_tie + 1 - true_positives
    above_all = float(np.nextafter(scores[0], np.inf))  # no image reaches it: the (0, 0) point
    return pd.DataFrame({
        "threshold": np.r_[above_all, scores[last_of_tie]],
        "fpr": np.r_[0.0, false_positives / max(false_positives[-1], 1)],
        "tpr": np.r_[0.0, true_positives / max(true_positives[-1], 1)],
    })


def youden_threshold(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity - 1 (Youden's J); meant for validation data. At most
    1: where no threshold beats chance the (0, 0) point wins, whose threshold lies just above the highest
    probability, and a threshold is a probability (cxr.artifacts refuses one above 1)."""
    curve = roc_curve(labels, probabilities)
    return min(float(curve["threshold"].iloc[int(np.argmax(curve["tpr"] - curve["fpr"]))]), 1.0)


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Binary cross-entropy with probabilities clipped to [1e-7, 1 - 1e-7], as Keras clips them: ours, not a
    library's, because the test loss must equal what `model.evaluate` and the training history report (the
    seed's table compares them), and libraries clip at other epsilons or not at all."""
    p = np.clip(np.asarray(probabilities, float), KERAS_EPSILON, 1 - KERAS_EPSILON)
    y = np.asarray(labels, float)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _resample_counts(patients: np.ndarray, samples: int, seed: int) -> Iterator[np.ndarray]:
    """`samples` patient resamples, each as many patients drawn with replacement as there are, in blocks of
    _RESAMPLES_AT_ONCE: how many times each film was drawn, [resamples, films] (a patient's films together)."""
    _, patient_of_film = np.unique(np.asarray(patients), return_inverse=True)
    patient_count = patient_of_film.max() + 1
    rng = np.random.default_rng(seed)
    for start in range(0, samples, _RESAMPLES_AT_ONCE):
        block = min(_RESAMPLES_AT_ONCE, samples - start)
        drawn = rng.integers(patient_count, size=(block, patient_count)) + patient_count * np.arange(block)[:, None]
        per_patient = np.bincount(drawn.ravel(), minlength=block * patient_count).reshape(block, patient_count)
        yield per_patient[:, patient_of_film].astype(float)


def patient_bootstrap(statistics: Callable[[np.ndarray], dict[str, np.ndarray]], patients: np.ndarray,
                      samples: int = settings.BOOTSTRAP_SAMPLES, seed: int = settings.SEED) -> dict[str, list[float]]:
    """95 % percentile intervals of `statistics`, resampling patients (not films): a patient's films are
    correlated, and resampling films would make the intervals too narrow. `statistics` maps a block of resamples,
    given as how many times each film was drawn ([resamples, films]), to named values, one per resample (the
    *_per_resample functions). Every statistic sees the same resamples, so values computed together (two models on
    the same films) stay paired.

    Ours, not scipy.stats.bootstrap: that one resamples observations, not clusters of them (a patient's
    films). A resample is a count per film rather than a list of drawn films, so that a statistic computes every
    resample of a block in a few array operations."""
    draws: dict[str, list[np.ndarray]] = {}
    for counts in _resample_counts(patients, samples, seed):
        for key, values in statistics(counts).items():
            draws.setdefault(key, []).append(np.asarray(values, float))
    return {key: percentile_interval(np.concatenate(values)) for key, values in draws.items()}


def bootstrap_intervals(labels: np.ndarray, probabilities: np.ndarray, patients: np.ndarray,
                        thresholds: dict[str, float], samples: int = settings.BOOTSTRAP_SAMPLES,
                        seed: int = settings.SEED) -> dict[str, list[float]]:
    """Patient-bootstrap intervals of the ROC AUC and of every threshold metric. Keys: "roc_auc" and
    "<name>/<metric>" per threshold."""
    def statistics(counts: np.ndarray) -> dict[str, np.ndarray]:
        values = {"roc_auc": roc_auc_per_resample(labels, probabilities, counts)}
        for name, threshold in thresholds.items():
            values.update({f"{name}/{metric}": v for metric, v in
                           threshold_metrics_per_resample(labels, probabilities, threshold, counts).items()})
        return values

    return patient_bootstrap(statistics, patients, samples, seed)


def percentile_interval(values: np.ndarray) -> list[float]:
    """The central settings.CONFIDENCE percentile interval of the defined draws (a resample without positives
    has no sensitivity)."""
    alpha = (1 - settings.CONFIDENCE) / 2
    defined = values[~np.isnan(values)]
    if not defined.size:
        return [float("nan"), float("nan")]
    return [float(np.quantile(defined, alpha)), float(np.quantile(defined, 1 - alpha))]


def json_safe(value):
    """NaN (a metric undefined for this data, such as precision with no positive prediction) as null."""
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def summarize(test: pd.DataFrame, val: pd.DataFrame, samples: int = settings.BOOTSTRAP_SAMPLES) -> dict:
    """All test metrics from predictions (columns label, probability, patient_id); the second threshold is
    chosen on `val` alone."""
    thresholds = {"default": settings.DEFAULT_THRESHOLD,
                  "validation": youden_threshold(val["label"], val["probability"])}
    y, p = test["label"].to_numpy(), test["probability"].to_numpy()
    intervals = bootstrap_intervals(y, p, test["patient_id"].to_numpy(), thresholds, samples)

    def with_interval(key: str, value: float) -> dict[str, float | list[float]]:
        return {"value": value, "ci95": intervals[key]}

    result = {
        "test_images": int(len(test)),
        "test_patients": int(test["patient_id"].nunique()),
        "loss": log_loss(y, p),
        "roc_auc": with_interval("roc_auc", roc_auc(y, p)),
        "thresholds": thresholds,
        "validation": {"loss": log_loss(val["label"], val["probability"]),
                       "roc_auc": roc_auc(val["label"], val["probability"]),
                       **threshold_metrics(val["label"].to_numpy(), val["probability"].to_numpy(),
                                           settings.DEFAULT_THRESHOLD)},
    }
    for name, threshold in thresholds.items():
        values = threshold_metrics(y, p, threshold)
        result[f"at_{name}_threshold"] = {
            **{metric: with_interval(f"{name}/{metric}", value) for metric, value in values.items()},
            "confusion_matrix": confusion_matrix(y, p >= threshold).tolist(),
        }
    return result
