"""Calibration: does a predicted P(pneumonia) of 0.9 come true for 9 films in 10?

A model can rank films well (high ROC AUC) and still be over- or under-confident; a clinician reading its
probability as a risk needs both.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxr import settings


def brier_score(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean squared distance between P(pneumonia) and the truth (0 or 1): 0 is perfect, 0.25 is a constant 0.5."""
    return float(np.mean((np.asarray(probabilities, float) - np.asarray(labels, float)) ** 2))


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


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray,
                               bins: int = settings.CALIBRATION_BINS) -> float:
    """Expected calibration error of P(pneumonia): the film-weighted mean gap between the mean predicted
    probability and the observed pneumonia rate over equal-width bins (Naeini et al. 2015; Guo et al. 2017)."""
    labels, probabilities = np.asarray(labels, float), np.asarray(probabilities, float)
    # films_b * |mean predicted_b - observed rate_b| = |sum over the bin of (probability - label)|
    gaps = np.bincount(_bins(probabilities, bins), probabilities - labels, minlength=bins)
    return float(np.abs(gaps).sum() / len(labels))
