"""The results a report compares: result folders read through their checked loaders, grouped into contenders
(one backbone in one regime with one head at its chosen learning rate, over its seeds), plus the ensemble of all of
them.

A result folder is what `cxr evaluate` wrote for one backbone, regime, head, learning rate and seed, or a folder
holding only failure.json for one that did not finish. A folder holding both failure.json and a complete evaluation
(a rerun that succeeded after a failure, or a failure recorded later beside a finished result) is reported as the
result it holds, and the report says so: the finished evaluation is the newer fact, and dropping it silently would
lose it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxr import artifacts, files, settings
from cxr.errors import UserError
from cxr.failures import Failure
from cxr.outputs import unfinished
from cxr.results import compare
from cxr.results.metrics import json_safe, summarize
from cxr.training.plan import fitted_without_learning_rate, row_key, row_name

ENSEMBLE = "Ensemble"


def label(backbone: str, regime: str, head: str = settings.DEFAULT_HEAD) -> str:
    """How the report names a contender: `ResNet50 · frozen`, with its head when it is a probe
    (`ResNet50 · frozen · linear`); the ensemble by its name alone."""
    return backbone if backbone == ENSEMBLE else row_name((backbone, regime, head))


def row_label(key: tuple) -> str:
    """How the report names the row of `key` (cxr.training.plan.row_key): the results of one row differ only in
    the learning rate (its candidates, cxr.results.tuning) and the seed."""
    return label(*key)


@dataclass(frozen=True)
class Result:
    """One backbone trained in one regime with one head at one learning rate with one seed and evaluated: the
    folder `cxr evaluate` wrote. Its fields of cxr.training.plan.ROW name its leaderboard row."""
    backbone: str
    regime: str
    head: str
    learning_rate: float
    seed: int
    folder: Path
    training: dict  # train_metrics.json
    history: pd.DataFrame  # history.csv
    metrics: dict  # metrics.json
    test: pd.DataFrame  # predictions.csv
    val: pd.DataFrame  # val_predictions.csv

    @property
    def learning_seconds(self) -> float:
        """The training's time, its feature extraction included (a frozen backbone's one forward pass over the
        films is part of what that regime costs)."""
        return float(self.training["learning_time_seconds"]) + float(self.training.get("feature_seconds", 0.0))


@dataclass(frozen=True)
class Contender:
    """One leaderboard row: a backbone in one regime with one head at its chosen learning rate over its seeds, or the
    ensemble of every other row."""
    backbone: str
    regime: str  # for the ensemble: the regimes of its members, joined by " + "
    head: str  # for the ensemble: the heads of its members, joined by " + "
    runs: tuple[Result, ...]  # one per seed, by seed; none for the ensemble
    test: np.ndarray  # P(pneumonia), one row per seed, on the common test films
    metrics: dict | None = None  # the ensemble's metrics (a backbone's are per run)
    candidates: int | None = None  # how many learning rates the row chose among; none for the ensemble

    @property
    def learning_rate(self) -> float | None:
        """The row's (chosen) learning rate; None for the ensemble and for a probe fitted by scikit-learn, which has
        none."""
        if not self.runs or fitted_without_learning_rate(self.regime, self.head):
            return None
        return self.runs[0].learning_rate

    @property
    def name(self) -> str:
        return label(self.backbone, self.regime, self.head)

    @property
    def probabilities(self) -> np.ndarray:
        """Seed-averaged P(pneumonia) per test film: what the paired comparisons compare."""
        return self.test.mean(axis=0)


RESULT_FILES = (files.TRAIN_METRICS, files.HISTORY, files.METRICS, files.PREDICTIONS, files.VAL_PREDICTIONS)


def holds_evaluation(folder: Path) -> bool:
    """Whether `folder` holds every file of an evaluation and no record says it is unfinished."""
    folder = Path(folder)
    return all((folder / name).is_file() for name in RESULT_FILES) and not unfinished(folder, "evaluate")


def failures(result_dirs: Sequence[Path]) -> list[Failure]:
    """The backbones/seeds among `result_dirs` that did not finish, for a caller to log or act on (a folder
    that holds a complete evaluation beside its failure.json finished)."""
    return [failure for folder in result_dirs
            if (failure := artifacts.read_failure(folder)) is not None and not holds_evaluation(folder)]


def gather(result_dirs: Sequence[Path]) -> tuple[list[Result], list[Failure], list[str]]:
    """The results among `result_dirs` (by backbone, regime, head, seed), the failures, and a note for every folder
    that holds both a failure record and a complete evaluation (its result is used)."""
    results, missing, notes = [], [], []
    for folder in map(Path, result_dirs):
        failure = artifacts.read_failure(folder)
        if failure is not None and not holds_evaluation(folder):
            missing.append(failure)
            continue
        results.append(load_result(folder))
        if failure is not None:
            notes.append(f"{folder} holds {files.FAILURE} ({failure.line()}) beside a complete evaluation: the "
                         "evaluation is reported")
    return sorted(results, key=lambda r: (*row_key(r), r.learning_rate, r.seed)), missing, notes


def load_result(folder: Path) -> Result:
    """One evaluated backbone, regime, head, learning rate and seed, from the folder `cxr evaluate` wrote; every
    file checked."""
    folder = Path(folder)
    for name in RESULT_FILES:
        if not (folder / name).is_file():
            raise UserError(f"missing {folder / name}: not a result folder of `cxr evaluate` (nor a failure; a "
                            "result from before val_predictions.csv existed needs `cxr evaluate` again)")
    metrics = artifacts.read_metrics(folder / files.METRICS)
    training = artifacts.read_train_metrics(folder / files.TRAIN_METRICS)
    for name in ("regime", "head"):
        if metrics[name] != training["settings"][name]:
            raise UserError(f"{folder / files.METRICS} says {name} {metrics[name]}, {folder / files.TRAIN_METRICS}"
                            f" {training['settings'][name]}: evaluate the training again into a new folder")
    return Result(metrics["backbone"], metrics["regime"], metrics["head"], float(training["settings"]["learning_rate"]),
                  int(training["settings"]["seed"]), folder, training,
                  artifacts.read_history(folder / files.HISTORY), metrics,
                  artifacts.read_predictions(folder / files.PREDICTIONS),
                  artifacts.read_val_predictions(folder / files.VAL_PREDICTIONS))


def refuse_duplicates(results: Sequence[Result]) -> None:
    """One result per row, learning rate and seed: two would count one training twice."""
    seen: dict[tuple, Path] = {}
    for result in results:
        key = (*row_key(result), result.learning_rate, result.seed)
        if key in seen:
            raise UserError(f"two result folders hold the same training ({row_label(row_key(result))}, learning "
                            f"rate {result.learning_rate:g}, seed {result.seed}): {seen[key]} and {result.folder}")
        seen[key] = result.folder


def _regime_order(regime: str) -> int:
    return settings.REGIMES.index(regime) if regime in settings.REGIMES else len(settings.REGIMES)


def _head_order(head: str) -> int:
    return settings.HEADS.index(head) if head in settings.HEADS else len(settings.HEADS)


def contenders(results: Sequence[Result], samples: int = settings.BOOTSTRAP_SAMPLES,
               candidates: Mapping[tuple, int] | None = None) -> tuple[pd.DataFrame, list[Contender]]:
    """The common test films and one Contender per row, backbone, regime and head (its seeds; `results` holds one
    learning rate per row, the chosen one, and `candidates` how many each row chose among, by row_key), plus the
    ensemble when two or more finished: the mean P(pneumonia) of the contenders (each seed-averaged), evaluated as
    a backbone is, its threshold chosen on the validation films."""
    candidates = candidates or {}
    test_films, test = compare.align_predictions([r.test for r in results],
                                                 [str(r.folder / files.PREDICTIONS) for r in results])
    val_films, val = compare.align_predictions([r.val for r in results],
                                               [str(r.folder / files.VAL_PREDICTIONS) for r in results])
    rows, val_of = [], []
    for key in sorted({row_key(r) for r in results},
                      key=lambda key: (key[0], _regime_order(key[1]), _head_order(key[2]))):
        members = [i for i, r in enumerate(results) if row_key(r) == key]
        rows.append(Contender(*key, tuple(results[i] for i in members), test[members],
                              candidates=candidates.get(key)))
        val_of.append(val[members].mean(axis=0))
    if len(rows) > 1:
        ensemble_test = np.mean([c.probabilities for c in rows], axis=0)
        ensemble_val = np.mean(val_of, axis=0)
        metrics = summarize(test_films.assign(probability=ensemble_test), val_films.assign(probability=ensemble_val),
                            samples)
        regimes = " + ".join(sorted({c.regime for c in rows}, key=_regime_order))
        heads = " + ".join(sorted({c.head for c in rows}, key=_head_order))
        rows.append(Contender(ENSEMBLE, regimes, heads, (), ensemble_test[None], json_safe(
            {"backbone": ENSEMBLE, "members": [c.name for c in rows], **metrics})))
    return test_films, rows
