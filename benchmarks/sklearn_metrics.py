"""The project's metric functions against scikit-learn's inside the patient bootstrap, in one run: the statistics
of one bootstrap resample (ROC AUC, the confusion matrix at two thresholds, the Brier score) on a test split of the
archive's size, computed both ways on the same resamples, interleaved so that both see the same load.

    python benchmarks/sklearn_metrics.py [--films 624] [--samples 300] [--rounds 5]

Prints each function's microseconds per resample both ways and the ratio scikit-learn / ours (above 1: scikit-learn
is slower), after checking that both give the same values.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import brier_score_loss, roc_auc_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from cxr.results.calibration import brier_score
from cxr.results.metrics import confusion_matrix, roc_auc


def ours(labels: np.ndarray, probabilities: np.ndarray) -> list:
    return [roc_auc(labels, probabilities), confusion_matrix(labels, probabilities >= 0.5),
            confusion_matrix(labels, probabilities >= 0.3), brier_score(labels, probabilities)]


def sklearn(labels: np.ndarray, probabilities: np.ndarray) -> list:
    return [roc_auc_score(labels, probabilities),
            sk_confusion_matrix(labels, probabilities >= 0.5, labels=[0, 1]),
            sk_confusion_matrix(labels, probabilities >= 0.3, labels=[0, 1]),
            brier_score_loss(labels, probabilities)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--films", type=int, default=624, help="the official test split's films")
    parser.add_argument("--samples", type=int, default=300, help="bootstrap resamples per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, alternating which arm goes first")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    labels = (rng.random(args.films) < 0.625).astype(int)  # 62.5 % pneumonia, as the test split
    probabilities = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1)
    resamples = [rng.integers(args.films, size=args.films) for _ in range(args.samples)]
    for chosen in resamples[:20]:
        a, b = ours(labels[chosen], probabilities[chosen]), sklearn(labels[chosen], probabilities[chosen])
        assert np.isclose(a[0], b[0]) and np.isclose(a[3], b[3])
        assert all(np.array_equal(x, y) for x, y in zip(a[1:3], b[1:3], strict=True))
    seconds = {"ours": 0.0, "scikit-learn": 0.0}
    arms = {"ours": ours, "scikit-learn": sklearn}
    for round_ in range(args.rounds):
        for name in (list(arms) if round_ % 2 == 0 else list(arms)[::-1]):
            started = time.perf_counter()
            for chosen in resamples:
                arms[name](labels[chosen], probabilities[chosen])
            seconds[name] += time.perf_counter() - started
    per_resample = {name: 1e6 * s / (args.rounds * args.samples) for name, s in seconds.items()}
    print(f"{args.films} films, {args.samples} resamples x {args.rounds} rounds (values checked equal)")
    for name, micro in per_resample.items():
        print(f"  {name:>12}: {micro:8.0f} us per resample (ROC AUC, 2 confusion matrices, Brier)")
    print(f"  ratio scikit-learn / ours: {per_resample['scikit-learn'] / per_resample['ours']:.2f}x")


if __name__ == "__main__":
    main()
