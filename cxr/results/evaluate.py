"""Medically meaningful evaluation on the test split: sensitivity, specificity and ROC AUC beside accuracy,
each with a 95 % interval from a bootstrap over patients, at 0.5 and at a threshold chosen on validation.

With 62.5 % pneumonia in the official test split, "always pneumonia" scores 62.5 % accuracy (GUIDE section 3):
accuracy alone says little. The threshold is never chosen on test data.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from cxr import files, settings
from cxr.errors import UserError
from cxr.failures import Failure, read_failure, write_failure
from cxr.outputs import claim, read_json

DEFAULT_THRESHOLD = 0.5
_EPSILON = 1e-7  # Keras' clipping in binary cross-entropy, so our test loss matches model.evaluate's


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """[[TN, FP], [FN, TP]]: rows are the true class (NORMAL, PNEUMONIA), columns the predicted one."""
    labels, predicted = np.asarray(labels, bool), np.asarray(predicted, bool)
    return np.array([[np.sum(~labels & ~predicted), np.sum(~labels & predicted)],
                     [np.sum(labels & ~predicted), np.sum(labels & predicted)]])


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else float("nan")


def threshold_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy, precision, sensitivity (recall of pneumonia), specificity and F1 when P >= threshold."""
    (tn, fp), (fn, tp) = confusion_matrix(labels, probabilities >= threshold)
    precision, sensitivity = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {
        "accuracy": _ratio(tp + tn, tn + fp + fn + tp),
        "precision": precision,
        "sensitivity": sensitivity,
        "specificity": _ratio(tn, tn + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts_group = np.r_[True, ordered[1:] != ordered[:-1]]
    starts = np.flatnonzero(starts_group)
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    ranks[order] = ((starts + ends + 1) / 2)[np.cumsum(starts_group) - 1]
    return ranks


def roc_auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U), ties counted half; NaN with a single class."""
    labels = np.asarray(labels, bool)
    positives, negatives = labels.sum(), (~labels).sum()
    if not positives or not negatives:
        return float("nan")
    rank_sum = average_ranks(np.asarray(probabilities, float))[labels].sum()
    return float((rank_sum - positives * (positives + 1) / 2) / (positives * negatives))


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
    """The threshold maximising sensitivity + specificity - 1 (Youden's J); meant for validation data."""
    curve = roc_curve(labels, probabilities)
    return float(curve["threshold"].iloc[int(np.argmax(curve["tpr"] - curve["fpr"]))])


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    p = np.clip(np.asarray(probabilities, float), _EPSILON, 1 - _EPSILON)
    y = np.asarray(labels, float)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def patient_bootstrap(statistics: Callable[[np.ndarray], dict[str, float]], patients: np.ndarray,
                      samples: int = settings.BOOTSTRAP_SAMPLES, seed: int = settings.SEED) -> dict[str, list[float]]:
    """95 % percentile intervals of `statistics` (film indices -> named values), resampling patients (not films):
    a patient's films are correlated, and resampling films would make the intervals too narrow. Every statistic
    sees the same resamples, so values computed together (two models on the same films) stay paired."""
    _, patient_codes = np.unique(np.asarray(patients), return_inverse=True)
    films_of = [np.flatnonzero(patient_codes == code) for code in range(patient_codes.max() + 1)]
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(samples):
        chosen = np.concatenate([films_of[i] for i in rng.integers(len(films_of), size=len(films_of))])
        for key, value in statistics(chosen).items():
            draws.setdefault(key, []).append(value)
    return {key: percentile_interval(np.asarray(values)) for key, values in draws.items()}


def bootstrap_intervals(labels: np.ndarray, probabilities: np.ndarray, patients: np.ndarray,
                        thresholds: dict[str, float], samples: int = settings.BOOTSTRAP_SAMPLES,
                        seed: int = settings.SEED) -> dict[str, list[float]]:
    """Patient-bootstrap intervals of the ROC AUC and of every threshold metric. Keys: "roc_auc" and
    "<name>/<metric>" per threshold."""
    labels, probabilities = np.asarray(labels), np.asarray(probabilities)

    def statistics(chosen: np.ndarray) -> dict[str, float]:
        y, p = labels[chosen], probabilities[chosen]
        values = {"roc_auc": roc_auc(y, p)}
        for name, threshold in thresholds.items():
            values.update({f"{name}/{metric}": v for metric, v in threshold_metrics(y, p, threshold).items()})
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
    thresholds = {"default": DEFAULT_THRESHOLD,
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
                                           DEFAULT_THRESHOLD)},
    }
    for name, threshold in thresholds.items():
        values = threshold_metrics(y, p, threshold)
        result[f"at_{name}_threshold"] = {
            **{metric: with_interval(f"{name}/{metric}", value) for metric, value in values.items()},
            "confusion_matrix": confusion_matrix(y, p >= threshold).tolist(),
        }
    return result


def predict(model, data_dir: Path, split: str, image_size: int, batch_size: int) -> pd.DataFrame:
    """One row per image of the split: patient_id, source, label, probability."""
    from cxr.data.reader import read_split

    rows = []
    for batch in read_split(data_dir, split, image_size, batch_size, with_metadata=True):
        # numpy, not a TensorFlow tensor: the model may run on another Keras backend (JAX).
        probabilities = np.asarray(model.predict_on_batch(batch["image"].numpy())).reshape(-1)
        rows.append(pd.DataFrame({
            "patient_id": [v.decode() for v in batch["patient_id"].numpy()],
            "source": [v.decode() for v in batch["source"].numpy()],
            "label": batch["label"].numpy().astype(int),
            "probability": probabilities.astype(float),
        }))
    return pd.concat(rows, ignore_index=True)


def evaluate(data_dir: Path, model_dir: Path, out: Path, batch_size: int = settings.BATCH_SIZE,
             samples: int = settings.BOOTSTRAP_SAMPLES) -> dict:
    """Evaluate model_dir's model.keras on the test split; write metrics.json, predictions.csv, roc.csv and
    val_predictions.csv (on which the report's ensemble chooses its threshold) to `out`, with the training's
    history.csv and train_metrics.json beside them, so that `out` is one complete result for `cxr report`.
    A rerun on a finished `out` reuses it."""
    model_dir, out = Path(model_dir), Path(out)
    if not 1 <= batch_size <= settings.MAX_BATCH_SIZE:
        raise UserError(f"--batch-size must be between 1 and {settings.MAX_BATCH_SIZE}, got {batch_size}")
    for name in (files.MODEL, files.TRAIN_METRICS, files.HISTORY):
        if not (model_dir / name).is_file():
            raise UserError(f"missing {model_dir / name} (run `cxr train` first)")
    trained = read_json(model_dir / files.TRAIN_METRICS)
    with claim(out, "evaluate", {"model": str(model_dir.resolve())}) as output:
        if output.finished and (out / files.METRICS).is_file():
            print(f"evaluate: {out} already holds this evaluation; reusing it", file=sys.stderr)
            return read_json(out / files.METRICS)
        if "train" in output.others and out.resolve() != model_dir.resolve():
            raise UserError(f"--out {out} holds another training; evaluate into its own folder or into the "
                            "training's folder")
        metrics = _evaluate(data_dir, model_dir, trained, out, batch_size, samples)
        output.finish()
    return metrics


def _evaluate(data_dir: Path, model_dir: Path, trained: dict, out: Path, batch_size: int, samples: int) -> dict:
    from cxr.serving.trained import load_model
    from cxr.training.backbones import get_backbone
    from cxr.training.frozen import saved_head_predictions

    backbone = get_backbone(trained["backbone"])
    # A frozen backbone's head already predicted every validation and test film from the feature cache: the
    # same probabilities as the whole model's (tests/test_regimes.py), without a second pass of the backbone.
    cached = saved_head_predictions(model_dir, data_dir, trained)
    if cached is not None:
        print(f"evaluate: the head's predictions on the cached features ({files.HEAD_PREDICTIONS})", file=sys.stderr)
        val, test = cached
    else:
        # Rebuilt in float32 and loaded with the trained weights: a model trained in mixed precision on a GPU
        # evaluates at full speed on a CPU, where float16 kernels are slow.
        model = load_model(model_dir)
        read = dict(data_dir=data_dir, image_size=trained["image_size"], batch_size=batch_size)
        val, test = predict(model, split="val", **read), predict(model, split="test", **read)
    metrics = json_safe({"backbone": backbone.name, **summarize(test, val, samples)})

    out.mkdir(parents=True, exist_ok=True)
    test.to_csv(out / files.PREDICTIONS, index=False)
    val.to_csv(out / files.VAL_PREDICTIONS, index=False)
    roc_curve(test["label"], test["probability"]).to_csv(out / files.ROC, index=False)
    for name in (files.TRAIN_METRICS, files.HISTORY):
        if model_dir.resolve() != out.resolve():
            shutil.copyfile(model_dir / name, out / name)
    (out / files.METRICS).write_text(json.dumps(metrics, indent=2, allow_nan=False))
    return metrics


def headline_metrics(metrics: dict) -> dict[str, float]:
    """The scalars a dashboard shows (the KFP UI's metrics table), rounded; undefined ones left out."""
    flat = {"roc_auc": metrics["roc_auc"]["value"], "test_loss": metrics["loss"],
            "validation_threshold": metrics["thresholds"]["validation"]}
    for name, prefix in (("default", ""), ("validation", "val_threshold_")):
        for metric in ("accuracy", "sensitivity", "specificity", "precision", "f1"):
            flat[prefix + metric] = metrics[f"at_{name}_threshold"][metric]["value"]
    return {name: round(value, 4) for name, value in flat.items() if value is not None}


def roc_points(result_dir: Path, max_points: int = 200) -> dict[str, list[float]]:
    """The test ROC curve of a result folder, thinned to at most `max_points` (ends kept) for the KFP UI."""
    curve = pd.read_csv(Path(result_dir) / files.ROC)
    keep = np.unique(np.linspace(0, len(curve) - 1, min(max_points, len(curve))).round().astype(int))
    return {column: curve[column].iloc[keep].astype(float).tolist() for column in ("fpr", "tpr", "threshold")}


def evaluate_or_record_failure(data_dir: Path, model_dir: Path, out: Path,
                               batch_size: int = settings.BATCH_SIZE) -> dict | Failure:
    """What a pipeline's evaluate step does: the metrics, or a Failure written into `out` (the training's
    failure passed on, or this evaluation's own error), so that the comparison goes on without this backbone."""
    failure = read_failure(model_dir)
    if failure is None:
        try:
            return evaluate(data_dir, model_dir, out, batch_size=batch_size)
        except Exception as error:  # any error here costs one backbone, not the whole comparison
            try:
                trained = read_json(Path(model_dir) / files.TRAIN_METRICS)
            except UserError:
                trained = {}
            failure = Failure(trained.get("backbone", "unknown"), trained.get("settings", {}).get("seed", -1),
                              "evaluate", f"{type(error).__name__}: {error}".splitlines()[0])
    write_failure(out, failure)
    return failure

