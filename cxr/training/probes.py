"""The standard probes on pooled frozen features, fitted by scikit-learn (docs/regimes.md):

- linear: L2-regularised logistic regression on standardised features, classes weighted as the seed's head
  weights them (n / (2 n_c)), its strength C chosen on validation ROC AUC from settings.LINEAR_C_GRID;
- knn: cosine k-nearest neighbours on L2-normalised features, P(pneumonia) the share of pneumonia among the
  neighbours (no weighting: the 3:1 imbalance shifts the probabilities, which the validation threshold and the
  rank-based ROC AUC absorb), k chosen on validation ROC AUC from settings.KNN_K_GRID.

Each returns the weights of its Keras layer in cxr.training.heads (the linear probe's standardisation folded into
a Dense layer's kernel and bias), so the saved model predicts what was fitted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler

from cxr import settings
from cxr.errors import UserError
from cxr.training.heads import normalize

# lbfgs on standardised features converges within a few hundred steps on 5,216 films x 2,048 features.
_MAX_ITERATIONS = 2000


@dataclass(frozen=True)
class Probe:
    """A fitted probe: its chosen hyperparameter, the validation ROC AUC of every value tried, and the weights of
    its Keras layer."""

    head: str
    parameter: str  # "C" (linear) or "k" (knn)
    value: float
    val_roc_auc: dict[str, float]  # per value of the grid, in grid order
    weights: list[np.ndarray] = field(repr=False)
    seconds: float  # the fit and the search, wall time
    train_films: int  # what it was fitted on (a kNN layer holds one reference per film)

    def record(self) -> dict:
        """What train_metrics.json keeps of it (weights aside): load_model rebuilds a kNN layer from it."""
        return {"head": self.head, "parameter": self.parameter, "value": self.value,
                "val_roc_auc": self.val_roc_auc, "references": self.train_films}


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Validation ROC AUC; 0.5 when one class is absent (no ranking to judge: every grid value ties)."""
    return float(roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else 0.5


def _best(scores: dict) -> object:
    """The grid value of the highest score; the first in grid order among ties (the grids put the safer value
    first: stronger regularisation, fewer neighbours)."""
    return max(scores, key=lambda value: (scores[value], -list(scores).index(value)))


def _check(train_labels: np.ndarray) -> None:
    if len(np.unique(train_labels)) < 2:
        raise UserError("the train split holds one class only: a probe needs NORMAL and PNEUMONIA films")


def fit_linear(train: np.ndarray, train_labels: np.ndarray, val: np.ndarray, val_labels: np.ndarray,
               grid: tuple[float, ...] = settings.LINEAR_C_GRID) -> Probe:
    """The logistic-regression probe; weights [kernel (features, 1), bias (1,)] of a sigmoid Dense layer on the raw
    pooled features (the scaler folded in: w / scale, b - sum(w * mean / scale))."""
    _check(train_labels)
    started = time.monotonic()
    scaler = StandardScaler().fit(train)
    train_scaled, val_scaled = scaler.transform(train), scaler.transform(val)
    fitted, scores = {}, {}
    for strength in grid:
        model = LogisticRegression(C=strength, class_weight="balanced", max_iter=_MAX_ITERATIONS)
        fitted[strength] = model.fit(train_scaled, train_labels)
        scores[strength] = _auc(val_labels, model.decision_function(val_scaled))
    chosen = _best(scores)
    coefficients = fitted[chosen].coef_[0] / scaler.scale_
    bias = fitted[chosen].intercept_[0] - float(np.dot(coefficients, scaler.mean_))
    weights = [coefficients.reshape(-1, 1).astype("float32"), np.array([bias], dtype="float32")]
    return Probe("linear", "C", float(chosen), {f"{c:g}": s for c, s in scores.items()}, weights,
                 time.monotonic() - started, len(train))


def fit_knn(train: np.ndarray, train_labels: np.ndarray, val: np.ndarray, val_labels: np.ndarray,
            grid: tuple[int, ...] = settings.KNN_K_GRID) -> Probe:
    """The cosine kNN probe; weights [reference features (train films, features), their labels] of a
    NearestNeighbours layer. One neighbour search at the largest k serves every k of the grid."""
    _check(train_labels)
    started = time.monotonic()
    grid = tuple(k for k in grid if k <= len(train)) or (len(train),)
    references = normalize(np.asarray(train, dtype="float32"))
    search = NearestNeighbors(n_neighbors=max(grid), metric="cosine", algorithm="brute").fit(references)
    labels = np.asarray(train_labels, dtype="float32")
    scores = {}
    if len(val):
        _, nearest = search.kneighbors(normalize(np.asarray(val, dtype="float32")))
        for k in grid:
            scores[k] = _auc(val_labels, labels[nearest[:, :k]].mean(axis=1))
    else:
        scores = dict.fromkeys(grid, 0.5)
    chosen = _best(scores)
    return Probe("knn", "k", int(chosen), {str(k): s for k, s in scores.items()}, [references, labels],
                 time.monotonic() - started, len(train))


FITTERS = {"linear": fit_linear, "knn": fit_knn}
