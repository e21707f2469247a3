"""Paired comparisons of models scored on the same test films: is one backbone's ROC AUC really above another's?

Two models evaluated on the same films make correlated errors (the hard films are hard for both), so their AUCs
are compared *paired*: DeLong's test on the films, and a bootstrap that draws the same patients for both models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from cxr import settings
from cxr.errors import UserError
from cxr.results.metrics import patient_bootstrap, roc_auc, roc_auc_per_resample

FILM_IDENTITY = ("source", "patient_id", "label")  # what identifies a film in predictions.csv


def delong_covariance(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ROC AUCs of k score vectors on the same films (rows of `scores`, shape (k, films)) and their k x k
    covariance matrix (DeLong, DeLong & Clarke-Pearson 1988), by the midrank algorithm of Sun & Xu (2014), which
    needs three rankings per model (scipy's midranks) instead of comparing every positive with every negative.

    Ours: neither scipy nor the other libraries this project uses implement DeLong's covariance or test."""
    labels = np.asarray(labels, bool)
    scores = np.atleast_2d(np.asarray(scores, float))
    positives, negatives = scores[:, labels], scores[:, ~labels]
    m, n = positives.shape[1], negatives.shape[1]
    aucs, over_negatives, under_positives = [], [], []
    for pos, neg in zip(positives, negatives, strict=True):
        pooled = rankdata(np.r_[pos, neg])
        # Structural components: per positive film, the share of negatives it outranks (ties half); per negative
        # film, the share of positives that outrank it. The AUC is the mean of either.
        over_negatives.append((pooled[:m] - rankdata(pos)) / n)
        under_positives.append(1 - (pooled[m:] - rankdata(neg)) / m)
        aucs.append(over_negatives[-1].mean())
    covariance = (np.atleast_2d(np.cov(np.array(over_negatives))) / m
                  + np.atleast_2d(np.cov(np.array(under_positives))) / n)
    return np.array(aucs), covariance


def delong_test(labels: np.ndarray, first: np.ndarray, second: np.ndarray) -> float:
    """Two-sided p-value of DeLong's test that two models scored on the same films have the same ROC AUC."""
    aucs, covariance = delong_covariance(labels, np.vstack([first, second]))
    difference = aucs[0] - aucs[1]
    variance = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
    if not variance > 0:  # the same ranking twice (or a perfect one): no spread to test against
        return 1.0 if difference == 0 else 0.0
    return math.erfc(abs(difference) / math.sqrt(2 * variance))  # normal tail, both sides


def paired_auc_difference(labels: np.ndarray, first: np.ndarray, second: np.ndarray, patients: np.ndarray,
                          samples: int = settings.BOOTSTRAP_SAMPLES,
                          seed: int = settings.SEED) -> tuple[float, list[float]]:
    """AUC(first) - AUC(second) and its 95 % interval from one patient bootstrap shared by both models."""
    labels, first, second = np.asarray(labels), np.asarray(first), np.asarray(second)

    def difference(counts: np.ndarray) -> dict[str, np.ndarray]:
        return {"difference": roc_auc_per_resample(labels, first, counts) - roc_auc_per_resample(labels, second,
                                                                                                   counts)}

    interval = patient_bootstrap(difference, patients, samples, seed)["difference"]
    return roc_auc(labels, first) - roc_auc(labels, second), interval


def indistinguishable(p_value: float, interval: Sequence[float]) -> bool:
    """Whether a difference cannot be told apart from none: DeLong's p at or above settings.SIGNIFICANCE, or the
    bootstrap interval reaches across 0 (either way of looking at the data fails to separate the two). An interval
    that only touches 0 does not count: against a perfect best model (AUC 1 in many resamples) the difference can
    never be above 0, so its upper end sits at 0 even for a clearly worse model."""
    return bool(p_value >= settings.SIGNIFICANCE or interval[0] < 0 < interval[1])


def align_predictions(frames: Sequence[pd.DataFrame], names: Sequence[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """The films (source, patient_id, label; sorted by source) and the probabilities of every frame on them,
    shape (frames, films), joined on `source`. Refuses frames of other films or other labels, naming the file."""
    films = frames[0].loc[:, list(FILM_IDENTITY)].sort_values("source", kind="stable").reset_index(drop=True)
    if films["source"].duplicated().any():
        raise UserError(f"{names[0]} lists a film twice")
    probabilities = []
    for frame, name in zip(frames, names, strict=True):
        indexed = frame.set_index("source")
        if len(frame) != len(films) or not indexed.index.is_unique or not indexed.index.isin(films["source"]).all():
            raise UserError(f"{name} holds other films than {names[0]}: results to compare must be evaluated on "
                            "the same dataset")
        ordered = indexed.loc[films["source"]]
        if not (ordered["label"].to_numpy() == films["label"].to_numpy()).all():
            raise UserError(f"{name} labels its films differently from {names[0]}")
        probabilities.append(ordered["probability"].to_numpy(float))
    return films, np.vstack(probabilities)
