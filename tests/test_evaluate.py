import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import recall_score, roc_auc_score

from cxr.results import calibration
from cxr.results import metrics as ev

# 4 normal, 6 pneumonia films; at 0.5: TN 3, FP 1, FN 2, TP 4 (worked out by hand).
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
PROBS = np.array([0.1, 0.2, 0.3, 0.7, 0.4, 0.45, 0.6, 0.8, 0.9, 0.95])


def test_confusion_matrix_rows_are_truth_columns_predictions():
    assert ev.confusion_matrix(LABELS, PROBS >= 0.5).tolist() == [[3, 1], [2, 4]]


def test_threshold_metrics_match_the_hand_computed_values():
    m = ev.threshold_metrics(LABELS, PROBS, 0.5)
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["sensitivity"] == pytest.approx(4 / 6)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["precision"] == pytest.approx(4 / 5)
    assert m["f1"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 2))


def test_always_pneumonia_has_no_specificity():
    m = ev.threshold_metrics(LABELS, np.ones(10), 0.5)
    assert m["accuracy"] == 0.6 and m["sensitivity"] == 1 and m["specificity"] == 0


def test_roc_auc_counts_pairs_and_ties():
    # 24 positive-negative pairs; misordered: 0.7 is above 0.4, 0.45 and 0.6 -> AUC = 21/24
    assert ev.roc_auc(LABELS, PROBS) == pytest.approx(21 / 24)
    assert ev.roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert np.isnan(ev.roc_auc([1, 1], [0.2, 0.3]))


def test_roc_curve_runs_from_origin_to_corner_with_finite_thresholds():
    curve = ev.roc_curve(LABELS, PROBS)
    assert (curve["fpr"].iloc[0], curve["tpr"].iloc[0]) == (0, 0)
    assert (curve["fpr"].iloc[-1], curve["tpr"].iloc[-1]) == (1, 1)
    assert np.isfinite(curve["threshold"]).all() and curve["threshold"].is_monotonic_decreasing
    assert np.trapezoid(curve["tpr"], curve["fpr"]) == pytest.approx(ev.roc_auc(LABELS, PROBS))


def test_youden_threshold_separates_a_separable_set():
    assert ev.youden_threshold([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.8]) == 0.6


def test_log_loss_matches_keras():
    import keras

    expected = float(keras.losses.BinaryCrossentropy()(LABELS.astype("float32"), PROBS.astype("float32")))
    assert ev.log_loss(LABELS, PROBS) == pytest.approx(expected, rel=1e-5)


def test_bootstrap_interval_contains_the_estimate_and_resamples_patients():
    patients = np.array(["a", "a", "b", "c", "d", "d", "e", "f", "g", "h"])
    intervals = ev.bootstrap_intervals(LABELS, PROBS, patients, {"default": 0.5}, samples=300)
    low, high = intervals["roc_auc"]
    assert low <= 21 / 24 <= high and low < high
    assert intervals["default/sensitivity"][0] <= 4 / 6 <= intervals["default/sensitivity"][1]


def test_patient_bootstrap_resamples_whole_patients_and_pairs_its_statistics():
    patients = np.array(["a", "a", "a", "b"])  # two patients drawn per resample: 0, 3 or 6 films of "a"
    seen = []

    def statistics(counts: np.ndarray) -> dict[str, np.ndarray]:
        seen.append(counts)
        films_of_a = counts[:, :3].sum(axis=1)
        return {"films of a": films_of_a, "copy": films_of_a.copy()}

    intervals = ev.patient_bootstrap(statistics, patients, samples=250)
    counts = np.concatenate(seen)
    assert counts.shape == (250, 4)  # in blocks, every resample once
    assert (counts[:, :3] == counts[:, [0]]).all()  # a patient's films are drawn together
    assert (counts[:, 0] + counts[:, 3] == 2).all()  # as many patients drawn as there are
    assert intervals["films of a"] == intervals["copy"] == [0.0, 6.0]


def test_the_resampled_statistics_are_those_of_the_drawn_films():
    """A resample given as counts scores as the list of drawn films does: each film as many times as drawn."""
    rng = np.random.default_rng(3)
    labels, probabilities = rng.random(40) < 0.6, np.round(rng.random(40), 1)  # rounded: many ties
    counts = rng.integers(0, 3, size=(5, 40)).astype(float)
    for row, drawn in zip(counts, [np.repeat(np.arange(40), c.astype(int)) for c in counts], strict=True):
        y, p = labels[drawn], probabilities[drawn]
        (auc,) = ev.roc_auc_per_resample(labels, probabilities, row[None])
        assert auc == pytest.approx(roc_auc_score(y, p))
        for name, (value,) in ev.threshold_metrics_per_resample(labels, probabilities, 0.5, row[None]).items():
            assert value == pytest.approx(ev.threshold_metrics(y, p, 0.5)[name]), name
        assert ev.threshold_metrics(y, p, 0.5)["sensitivity"] == pytest.approx(recall_score(y, p >= 0.5))
        (brier,) = calibration.brier_score_per_resample(labels, probabilities, row[None])
        assert brier == pytest.approx(np.mean((p - y) ** 2))
        (ece,) = calibration.expected_calibration_error_per_resample(labels, probabilities, row[None])
        assert ece == pytest.approx(calibration.expected_calibration_error(y, p))


def test_the_threshold_is_chosen_on_validation_never_on_test():
    rng = np.random.default_rng(0)
    test = pd.DataFrame({"label": LABELS, "probability": PROBS, "patient_id": [str(i) for i in range(10)]})
    val = pd.DataFrame({"label": [0, 0, 1, 1], "probability": [0.05, 0.1, 0.15, 0.2], "patient_id": list("wxyz")})
    summary = ev.summarize(test, val, samples=50)
    assert summary["thresholds"] == {"default": 0.5, "validation": 0.15}
    shuffled = test.assign(probability=rng.permutation(PROBS))
    assert ev.summarize(shuffled, val, samples=50)["thresholds"]["validation"] == 0.15


def test_evaluate_writes_a_complete_result(processed_dataset, evaluated_results):
    result = evaluated_results["MobileNet"]
    metrics = json.loads((result / "metrics.json").read_text())
    assert sorted(p.name for p in result.iterdir()) == [".cxr-lock", ".cxr-output.json", "history.csv",
                                                       "metrics.json", "predictions.csv", "roc.csv",
                                                       "train_metrics.json", "val_predictions.csv"]
    assert metrics["backbone"] == "MobileNet"
    predictions = pd.read_csv(result / "predictions.csv")
    manifest = pd.read_csv(processed_dataset / "manifest.csv")
    assert list(predictions["source"]) == list(manifest[manifest["split"] == "test"]["source"])
    assert predictions["probability"].between(0, 1).all()
    validation = pd.read_csv(result / "val_predictions.csv")  # the ensemble's threshold is chosen on these
    assert list(validation["source"]) == list(manifest[manifest["split"] == "val"]["source"])
    assert list(validation.columns) == list(predictions.columns)
    matrix = metrics["at_default_threshold"]["confusion_matrix"]
    assert sum(map(sum, matrix)) == metrics["test_images"] == len(predictions)
    for key in ("accuracy", "precision", "sensitivity", "specificity", "f1"):
        assert set(metrics["at_validation_threshold"][key]) == {"value", "ci95"}
