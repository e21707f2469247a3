"""The paired comparison against independent computations: DeLong's test by hand and by the O(m n) definition,
and the patient bootstrap's coverage of a known AUC difference in simulation."""

import math

import numpy as np
import pandas as pd
import pytest

from cxr.errors import UserError
from cxr.results import compare
from cxr.results.metrics import roc_auc

# Worked by hand. Positives (3 films), negatives (2 films):
#   A: positives 0.9 0.6 0.4, negatives 0.5 0.1 -> per positive, share of negatives below: 1 1 .5; AUC 5/6
#                                                  per negative, share of positives above: 2/3 1
#   B: positives 0.7 0.1 0.8, negatives 0.6 0.2 -> 1 0 1; AUC 2/3; per negative 2/3 2/3 (0.1 vs 0.2: below)
# Sample (co)variances of the per-positive components: var A 1/12, var B 1/3, cov -1/12; per-negative: var A 1/18,
# var B 0, cov 0. Var(AUC A) = 1/12/3 + 1/18/2 = 1/18, Var(AUC B) = 1/3/3 = 1/9, Cov = -1/12/3 = -1/36.
# Var(A - B) = 1/18 + 1/9 + 2/36 = 2/9; z = (1/6) / sqrt(2/9) = sqrt(2)/4; two-sided p = erfc(z/sqrt 2) = erfc(1/4).
LABELS = np.array([1, 1, 1, 0, 0])
A = np.array([0.9, 0.6, 0.4, 0.5, 0.1])
B = np.array([0.7, 0.1, 0.8, 0.6, 0.2])


def test_delong_matches_the_hand_computation():
    aucs, covariance = compare.delong_covariance(LABELS, np.vstack([A, B]))
    assert aucs == pytest.approx([5 / 6, 2 / 3])
    assert covariance == pytest.approx(np.array([[1 / 18, -1 / 36], [-1 / 36, 1 / 9]]))
    assert compare.delong_test(LABELS, A, B) == pytest.approx(math.erfc(0.25))  # 0.7237
    assert compare.delong_test(LABELS, B, A) == pytest.approx(math.erfc(0.25))


def brute_force_delong(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong et al. (1988) as written: psi over every positive-negative pair, then the structural components."""
    labels = np.asarray(labels, bool)
    m, n = labels.sum(), (~labels).sum()
    v10, v01 = [], []
    for row in scores:
        pos, neg = row[labels], row[~labels]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])  # m x n
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    v10, v01 = np.array(v10), np.array(v01)
    s10 = (v10 - v10.mean(1, keepdims=True)) @ (v10 - v10.mean(1, keepdims=True)).T / (m - 1)
    s01 = (v01 - v01.mean(1, keepdims=True)) @ (v01 - v01.mean(1, keepdims=True)).T / (n - 1)
    return v10.mean(axis=1), s10 / m + s01 / n


def test_fast_delong_equals_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    # Rounded to two decimals: many ties, which the midranks must count half as the pairwise form does.
    scores = np.round(np.vstack([rng.normal(labels * s, 1) for s in (0.5, 1.0, 1.5)]) / 4 + 0.5, 2)
    aucs, covariance = compare.delong_covariance(labels, scores)
    expected_aucs, expected_covariance = brute_force_delong(labels, scores)
    assert aucs == pytest.approx(expected_aucs, abs=1e-12)
    assert aucs == pytest.approx([roc_auc(labels, row) for row in scores], abs=1e-12)
    assert covariance == pytest.approx(expected_covariance, abs=1e-12)


def test_delong_separates_a_clear_difference_and_not_a_ranking_with_itself():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 400)
    strong, weak = rng.normal(labels * 2.5, 1), rng.normal(labels * 0.3, 1)
    assert compare.delong_test(labels, strong, weak) < 1e-6
    assert compare.delong_test(labels, strong, strong * 3 + 1) == 1.0  # the same ranking


def simulated_study(rng: np.random.Generator, patients: int = 60) -> tuple[pd.DataFrame, float]:
    """Patients with 1-3 films each; every film gets two correlated scores, equal-variance binormal, with a patient
    effect shared by a patient's films. True AUC = Phi(d / sqrt(2 var)) = (1 + erf(d / (2 sqrt var))) / 2."""
    films = rng.integers(1, 4, patients)
    patient = np.repeat(np.arange(patients), films)
    label = np.repeat(rng.integers(0, 2, patients), films)
    shared = np.repeat(rng.normal(0, 0.6, patients), films)  # patient effect, variance 0.36
    common = rng.normal(0, 0.6, len(patient))  # what both models get wrong on a film, variance 0.36
    variance = 0.36 + 0.36 + 0.28
    first = 1.2 * label + shared + common + rng.normal(0, math.sqrt(0.28), len(patient))
    second = 0.6 * label + shared + common + rng.normal(0, math.sqrt(0.28), len(patient))

    def true_auc(d: float) -> float:
        return (1 + math.erf(d / (2 * math.sqrt(variance)))) / 2

    frame = pd.DataFrame({"patient_id": patient, "label": label, "first": first, "second": second})
    return frame, true_auc(1.2) - true_auc(0.6)


def test_paired_bootstrap_covers_the_true_difference_at_about_the_nominal_rate():
    rng = np.random.default_rng(3)
    covered, studies = 0, 200
    for study in range(studies):
        frame, truth = simulated_study(rng)
        _, (low, high) = compare.paired_auc_difference(frame["label"], frame["first"], frame["second"],
                                                       frame["patient_id"], samples=200, seed=study)
        covered += low <= truth <= high
    assert 0.88 <= covered / studies <= 0.99


def test_paired_difference_is_the_difference_of_the_aucs():
    patients = np.array(["a", "a", "b", "c", "d"])
    difference, (low, high) = compare.paired_auc_difference(LABELS, A, B, patients, samples=200)
    assert difference == pytest.approx(1 / 6)
    assert low <= difference <= high


def test_indistinguishable_by_either_test():
    assert compare.indistinguishable(0.2, [0.01, 0.05])
    assert compare.indistinguishable(0.01, [-0.01, 0.05])
    assert not compare.indistinguishable(0.01, [0.01, 0.05])
    # Against a perfect best model the interval's upper end is 0 exactly: DeLong decides (measured in `make demo`).
    assert not compare.indistinguishable(0.018, [-0.297, 0.0])


def frame(sources, labels, probabilities):
    return pd.DataFrame({"patient_id": [s[0] for s in sources], "source": sources, "label": labels,
                         "probability": probabilities})


def test_align_joins_on_the_film_and_refuses_other_films():
    first = frame(["a1", "b1", "c1"], [1, 0, 1], [0.9, 0.2, 0.7])
    second = frame(["c1", "a1", "b1"], [1, 1, 0], [0.6, 0.8, 0.1])  # other order
    films, probabilities = compare.align_predictions([first, second], ["one", "two"])
    assert list(films["source"]) == ["a1", "b1", "c1"]
    assert probabilities.tolist() == [[0.9, 0.2, 0.7], [0.8, 0.1, 0.6]]
    with pytest.raises(UserError, match="two holds other films"):
        compare.align_predictions([first, frame(["a1", "b1", "d1"], [1, 0, 1], [0.5] * 3)], ["one", "two"])
    with pytest.raises(UserError, match="two labels its films differently"):
        compare.align_predictions([first, frame(["a1", "b1", "c1"], [1, 1, 1], [0.5] * 3)], ["one", "two"])
