"""Calibration against hand computations and simulated models whose calibration is known by construction."""

import numpy as np
import pytest

from cxr.results import calibration


def test_brier_score_by_hand():
    # (0.9-1)^2 + (0.2-0)^2 + (0.6-0)^2 + (0.5-1)^2 = 0.01 + 0.04 + 0.36 + 0.25 = 0.66; / 4
    assert calibration.brier_score([1, 0, 0, 1], [0.9, 0.2, 0.6, 0.5]) == pytest.approx(0.165)
    assert calibration.brier_score([1, 0], [0.5, 0.5]) == pytest.approx(0.25)


def test_ece_and_reliability_by_hand():
    # 15 bins of width 1/15: 0.05 -> bin 0, 0.95 and 1.0 -> bin 14 (1.0 belongs to the last bin).
    labels, probabilities = [0, 1, 1, 0], [0.05, 0.95, 1.0, 0.95]
    table = calibration.reliability(labels, probabilities)
    assert len(table) == 15 and table["films"].sum() == 4
    assert table.loc[0, ["films", "predicted", "observed"]].tolist() == pytest.approx([1, 0.05, 0])
    assert table.loc[14, ["films", "predicted", "observed"]].tolist() == pytest.approx([3, 2.9 / 3, 2 / 3])
    assert np.isnan(table.loc[7, "observed"])
    # bin 0: 1 film, gap 0.05; bin 14: 3 films, gap 2.9/3 - 2/3 = 0.3 -> (0.05 + 0.9) / 4
    assert calibration.expected_calibration_error(labels, probabilities) == pytest.approx(0.95 / 4)


def test_ece_is_near_zero_for_a_calibrated_model_and_large_for_an_overconfident_one():
    rng = np.random.default_rng(0)
    truth = rng.uniform(0, 1, 20_000)  # the real chance of pneumonia of each film
    labels = rng.uniform(0, 1, truth.size) < truth
    logit = np.log(truth / (1 - truth))
    overconfident = 1 / (1 + np.exp(-3 * logit))  # pushed towards 0 and 1
    assert calibration.expected_calibration_error(labels, truth) < 0.02
    assert calibration.expected_calibration_error(labels, overconfident) > 0.1
    assert calibration.brier_score(labels, truth) < calibration.brier_score(labels, overconfident)
