"""Calibration: does a predicted P(pneumonia) of 0.9 come true for 9 films in 10?

A model can rank films well (high ROC AUC) and still be over- or under-confident; a clinician reading its
probability as a risk needs both.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxr import settings


def brier_score_per_resample(labels: np.ndarray, probabilities: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The Brier score of each resample of the films: `counts` [resamples, films] says how many times each film
    was drawn into each (cxr.results.metrics.patient_bootstrap)."""
    squared = (np.asarray(probabilities, float) - np.asarray(labels, float)) ** 2
    return counts @ squared / counts.sum(axis=1)


def brier_score(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean squared distance between P(pneumonia) and the truth (0 or 1): 0 is perfect, 0.25 is a constant 0.5."""
    return float(brier_score_per_resample(labels, probabilities, np.ones((1, len(labels))))[0])


def _bins(probabilities: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bin of each probability; 1.0 falls into the last bin."""
    return np.minimum((np.asarray(probabilities, float) * bins).astype(int), bins - 1)


def reliability(labels: np.ndarray, probabilities: np.ndarray, bins: int = settings.CALIBRATION_BINS) -> pd.DataFrame:
    """One row per equal-width bin of P(pneumonia): its bounds, films, mean predicted probability and observed
    pneumonia rate (NaN in an empty bin): the points of a reliability diagram."""
    labels, probabilities = np.asarray(labels, float), np.asarray(probabilities, float)
    index = _bins(probabilities, bins)
    films = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        predicted = np.bincount(index, probabilities, minlength=bins) / films
        observed = np.bincount(index, labels, minlength=bins) / films
    edges = np.linspace(0, 1, bins + 1)
    return pd.DataFrame({"low": edges[:-1], "high": edges[1:], "films": films, "predicted": predicted,
                         "observed": observed})


def expected_calibration_error_per_resample(labels: np.ndarray, probabilities: np.ndarray, counts: np.ndarray,
                                            bins: int = settings.CALIBRATION_BINS) -> np.ndarray:
    """expected_calibration_error of each resample of the films (`counts` as in brier_score_per_resample)."""
    labels, probabilities = np.asarray(labels, float), np.asarray(probabilities, float)
    # films_b * |mean predicted_b - observed rate_b| = |sum over the bin of (probability - label)|
    gap_in_bin = np.eye(bins)[_bins(probabilities, bins)] * (probabilities - labels)[:, None]  # [films, bins]
    return np.abs(counts @ gap_in_bin).sum(axis=1) / counts.sum(axis=1)


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray,
                               bins: int = settings.CALIBRATION_BINS) -> float:
    """Expected calibration error of P(pneumonia): the film-weighted mean gap between the mean predicted
    probability and the observed pneumonia rate over equal-width bins (Naeini et al. 2015; Guo et al. 2017)."""
    once = np.ones((1, len(labels)))
    return float(expected_calibration_error_per_resample(labels, probabilities, once, bins)[0])
