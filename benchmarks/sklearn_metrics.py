"""The project's patient-bootstrap statistics against scikit-learn's metric functions, in one run: the ROC AUC,
sensitivity and specificity at two thresholds and the Brier score of every bootstrap resample of a test split of
the archive's size. scikit-learn scores each resample's list of drawn films; cxr scores a block of resamples at
once from how many times each film was drawn (cxr.results.metrics.patient_bootstrap). Both arms score the same
resamples, interleaved so that both see the same load.

    python benchmarks/sklearn_metrics.py [--films 624] [--samples 1000] [--rounds 5]

Prints each arm's microseconds per resample and the ratio scikit-learn / ours (above 1: scikit-learn is slower),
after checking that both give the same values.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import brier_score_loss, confusion_matrix, roc_auc_score

from cxr.results.calibration import brier_score_per_resample
from cxr.results.metrics import roc_auc_per_resample, threshold_metrics_per_resample

THRESHOLDS = (0.5, 0.3)


def ours(labels: np.ndarray, probabilities: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[resamples, 6]: ROC AUC, sensitivity and specificity at each threshold, Brier score."""
    columns = [roc_auc_per_resample(labels, probabilities, counts)]
    for threshold in THRESHOLDS:
        at = threshold_metrics_per_resample(labels, probabilities, threshold, counts)
        columns += [at["sensitivity"], at["specificity"]]
    return np.column_stack([*columns, brier_score_per_resample(labels, probabilities, counts)])


def sklearn(labels: np.ndarray, probabilities: np.ndarray, resamples: list[np.ndarray]) -> np.ndarray:
    rows = []
    for chosen in resamples:
        y, p = labels[chosen], probabilities[chosen]
        row = [roc_auc_score(y, p)]
        for threshold in THRESHOLDS:
            (tn, fp), (fn, tp) = confusion_matrix(y, p >= threshold, labels=[0, 1])
            row += [tp / (tp + fn), tn / (tn + fp)]
        rows.append([*row, brier_score_loss(y, p)])
    return np.array(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--films", type=int, default=624, help="the official test split's films")
    parser.add_argument("--samples", type=int, default=1000, help="bootstrap resamples per round (settings)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, alternating which arm goes first")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    labels = (rng.random(args.films) < 0.625).astype(int)  # 62.5 % pneumonia, as the test split
    probabilities = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1)
    resamples = [rng.integers(args.films, size=args.films) for _ in range(args.samples)]
    counts = np.array([np.bincount(chosen, minlength=args.films) for chosen in resamples], float)
    assert np.allclose(ours(labels, probabilities, counts), sklearn(labels, probabilities, resamples))
    arms = {"ours": lambda: ours(labels, probabilities, counts),
            "scikit-learn": lambda: sklearn(labels, probabilities, resamples)}
    seconds = dict.fromkeys(arms, 0.0)
    for round_ in range(args.rounds):
        for name in (list(arms) if round_ % 2 == 0 else list(arms)[::-1]):
            started = time.perf_counter()
            arms[name]()
            seconds[name] += time.perf_counter() - started
    per_resample = {name: 1e6 * s / (args.rounds * args.samples) for name, s in seconds.items()}
    print(f"{args.films} films, {args.samples} resamples x {args.rounds} rounds (values checked equal)")
    for name, micro in per_resample.items():
        print(f"  {name:>12}: {micro:8.1f} us per resample (ROC AUC, sensitivity and specificity at 2 thresholds, "
              "Brier)")
    print(f"  ratio scikit-learn / ours: {per_resample['scikit-learn'] / per_resample['ours']:.1f}x")


if __name__ == "__main__":
    main()
