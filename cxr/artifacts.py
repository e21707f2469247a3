"""Checked loaders for the files the steps hand to each other: one function per artifact (cxr.files names them).

Each loader checks what its readers rely on (columns, types, ranges, required keys) and raises a UserError whose
one line names the file and what is wrong, so that a damaged, truncated or hand-edited file never reaches the
statistics as a traceback or, worse, as a plausible number. A probability or a threshold is a finite number in
[0, 1]; a label is 0 (NORMAL) or 1 (PNEUMONIA); a statistic that compares the classes (ROC AUC, the validation
threshold) needs at least one film of each.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pandas as pd

from cxr import files, settings
from cxr.errors import UserError
from cxr.failures import STAGES, Failure
from cxr.outputs import read_json, unfinished

# What identifies a film and what a model said of it: predictions.csv and val_predictions.csv (cxr evaluate).
PREDICTION_COLUMNS = ("patient_id", "source", "label", "probability")
MANIFEST_COLUMNS = ("split", "label", "patient_id", "source")  # what the readers of manifest.csv use
HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")
ROC_COLUMNS = ("threshold", "fpr", "tpr")
LESION_COLUMNS = ("file", "width", "height", "x_min", "y_min", "x_max", "y_max")
# One row per Grad-CAM heatmap of `cxr explain`, in the order of its .npy files.
GRADCAM_FILM_COLUMNS = ("source", "label", "probability", "outcome", "in_panel", "shared", "point_x", "point_y",
                        "hit")
_THRESHOLD_METRICS = ("accuracy", "precision", "sensitivity", "specificity", "f1")
_TEXT_COLUMNS = {"patient_id": str, "source": str, "file": str, "split": str, "outcome": str}


def _fail(path: Path, problem: str) -> NoReturn:
    raise UserError(f"{path}: {problem}")


# --- CSV files ---------------------------------------------------------------------------------------------

def _read_csv(path: Path, columns: Sequence[str], made_by: str) -> pd.DataFrame:
    """The table at `path` with at least `columns` and one row; identifiers read as text (a patient "0012"
    stays "0012"), and every number read back exactly as written (pandas' default float parser may be one ULP
    off, enough to move a probability across the threshold it was compared with)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing {path} (written by {made_by})")
    try:
        frame = pd.read_csv(path, dtype=_TEXT_COLUMNS, keep_default_na=True, float_precision="round_trip")
    except pd.errors.EmptyDataError:
        _fail(path, f"is empty; write it again with {made_by}")
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as error:
        _fail(path, f"is not a readable CSV table ({type(error).__name__}); write it again with {made_by}")
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        _fail(path, f"missing column(s) {', '.join(missing)}")
    if frame.empty:
        _fail(path, "has no rows")
    return frame


def _shown(value) -> str:
    """A cell as the message shows it: text quoted, a number as written, a blank or NaN said so."""
    if isinstance(value, float | np.floating) and np.isnan(value):
        return "empty or NaN"
    if isinstance(value, np.generic):
        value = value.item()
    return repr(value) if isinstance(value, str) else str(value)


def _line(index: int) -> int:
    """The file's line of a row: the header is line 1."""
    return int(index) + 2


def _numbers(frame: pd.DataFrame, path: Path, column: str, low: float | None = None, high: float | None = None,
             what: str = "number") -> np.ndarray:
    """A column as finite floats, each in [low, high] where given; otherwise one line naming the first bad row."""
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(float)
    bad = ~np.isfinite(values)
    if low is not None:
        bad |= values < low
    if high is not None:
        bad |= values > high
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        bounds = f" in [{low:g}, {high:g}]" if low is not None and high is not None else ""
        _fail(path, f"{column} on line {_line(index)} is {_shown(frame[column].iloc[index])}; each {what} must be a "
                    f"finite number{bounds}")
    return values


def _labels(frame: pd.DataFrame, path: Path) -> np.ndarray:
    values = pd.to_numeric(frame["label"], errors="coerce").to_numpy(float)
    bad = ~np.isin(values, (0, 1))
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        _fail(path, f"label on line {_line(index)} is {_shown(frame['label'].iloc[index])}; a label is 0 "
                    f"({settings.CLASS_NAMES[0]}) or 1 ({settings.CLASS_NAMES[1]})")
    return values.astype(int)


def _text(frame: pd.DataFrame, path: Path, column: str, unique: bool = False) -> None:
    blank = frame[column].isna() | (frame[column].astype(str).str.strip() == "")
    if blank.any():
        _fail(path, f"{column} on line {_line(int(np.flatnonzero(blank)[0]))} is empty")
    if unique and frame[column].duplicated().any():
        _fail(path, f"lists {frame.loc[frame[column].duplicated(), column].iloc[0]!r} twice")


def _both_classes(labels: np.ndarray, path: Path, why: str) -> None:
    present = set(labels.tolist())
    if present != {0, 1}:
        only = settings.CLASS_NAMES[present.pop()] if present else "none"
        _fail(path, f"holds films of one class only ({only}); {why} needs at least one film of each")


def _predictions(path: Path, both_classes: bool, why: str) -> pd.DataFrame:
    frame = _read_csv(path, PREDICTION_COLUMNS, "`cxr evaluate`")
    _text(frame, path, "patient_id")
    _text(frame, path, "source", unique=True)
    labels = _labels(frame, path)
    probabilities = _numbers(frame, path, "probability", 0, 1, "probability")
    if both_classes:
        _both_classes(labels, path, why)
    return frame.assign(label=labels, probability=probabilities)


def read_predictions(path: Path, both_classes: bool = True) -> pd.DataFrame:
    """predictions.csv (the test films): patient_id, source, label, probability; `both_classes` for the
    statistics that compare the classes (ROC AUC, sensitivity beside specificity)."""
    return _predictions(path, both_classes, "the test ROC AUC")


def read_val_predictions(path: Path) -> pd.DataFrame:
    """val_predictions.csv: the validation films, on which a threshold is chosen (so both classes are needed)."""
    return _predictions(path, True, "choosing the validation threshold")


def read_manifest(path: Path) -> pd.DataFrame:
    """manifest.csv (cxr preprocess): one row per kept film with its split, label, patient_id and source."""
    frame = _read_csv(path, MANIFEST_COLUMNS, "`cxr preprocess`")
    for column in ("patient_id", "source"):
        _text(frame, path, column)
    unknown = ~frame["split"].isin(settings.SPLITS)
    if unknown.any():
        index = int(np.flatnonzero(unknown)[0])
        _fail(path, f"split on line {_line(index)} is {_shown(frame['split'].iloc[index])}; expected one of "
                    f"{', '.join(settings.SPLITS)}")
    return frame.assign(label=_labels(frame, path))


def read_history(path: Path) -> pd.DataFrame:
    """history.csv (cxr train): one row per epoch, loss and accuracy on train and validation."""
    frame = _read_csv(path, HISTORY_COLUMNS, "`cxr train`")
    _numbers(frame, path, "epoch", 1, None, "epoch")
    # A diverged epoch is never recorded (cxr.training), so every loss is finite.
    for column in HISTORY_COLUMNS[1:]:
        frame[column] = _numbers(frame, path, column, 0, None)
    return frame


def read_roc(path: Path) -> pd.DataFrame:
    """roc.csv (cxr evaluate): the test ROC curve, every threshold finite (the KFP UI refuses others)."""
    frame = _read_csv(path, ROC_COLUMNS, "`cxr evaluate`")
    _numbers(frame, path, "threshold")
    for column in ("fpr", "tpr"):
        _numbers(frame, path, column, 0, 1, "rate")
    return frame


def read_lesions(path: Path, option: str = "--lesions") -> pd.DataFrame:
    """lesions.csv as `cxr synth` writes it: one box per row, in the pixels of a film of the given size."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{option} {path}: no such file")
    try:
        frame = _read_csv(path, LESION_COLUMNS, "`cxr synth`")
        for column in LESION_COLUMNS[1:]:
            _numbers(frame, path, column, 0, None, "size or coordinate")
    except UserError as error:
        raise UserError(f"{option} {error}") from None
    return frame


def read_gradcam_films(path: Path) -> pd.DataFrame:
    """<Backbone>_gradcam.csv (cxr explain): the films under the heatmaps, in the order of the .npy files."""
    frame = _read_csv(path, GRADCAM_FILM_COLUMNS, "`cxr explain`")
    _text(frame, path, "source")
    _numbers(frame, path, "probability", 0, 1, "probability")
    for column in ("point_x", "point_y"):
        _numbers(frame, path, column, 0, None, "coordinate")
    return frame.assign(label=_labels(frame, path))


# --- JSON files --------------------------------------------------------------------------------------------

def _value(record: Mapping, path: Path, key: str) -> Any:
    """record[a][b] for key "a.b"; a missing key is one line naming it."""
    value: Any = record
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            _fail(path, f"has no {key}")
        value = value[part]
    return value


def _number(record: Mapping, path: Path, key: str, low: float | None = None, high: float | None = None,
            nullable: bool = False, integer: bool = False) -> float | None:
    """A finite number (an int where `integer`) in [low, high]; null allowed where `nullable` (a metric the data
    leaves undefined, such as precision with no positive prediction, is written as null)."""
    value = _value(record, path, key)
    if value is None and nullable:
        return None
    kind = "a whole number" if integer else "a finite number"
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (not integer or float(value).is_integer())
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        if low is not None and high is not None:
            bounds = f" in [{low:g}, {high:g}]"
        else:
            bounds = f" of at least {low:g}" if low is not None else ""
        _fail(path, f"{key} is {value!r}; expected {kind}{bounds}")
    return int(value) if integer else float(value)


def _string(record: Mapping, path: Path, key: str, choices: Iterable[str] | None = None) -> str:
    value = _value(record, path, key)
    choices = tuple(choices) if choices is not None else None
    if not isinstance(value, str) or not value or (choices is not None and value not in choices):
        expected = f"one of {', '.join(choices)}" if choices is not None else "a non-empty text"
        _fail(path, f"{key} is {value!r}; expected {expected}")
    return value


def _object(path: Path, made_by: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing {path} (written by {made_by})")
    return read_json(path)  # one line for an empty, truncated or non-object file


def _has(record: Mapping, key: str) -> bool:
    value: Any = record
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return False
        value = value[part]
    return True


def _regime(record: Mapping, path: Path, key: str) -> str:
    """The record's training regime, the default where it names none (it predates regimes)."""
    return _string(record, path, key, settings.REGIMES) if _has(record, key) else settings.DEFAULT_REGIME


def _head(record: Mapping, path: Path, key: str) -> str:
    """The record's head, the seed's where it names none (it predates the probes)."""
    return _string(record, path, key, settings.HEADS) if _has(record, key) else settings.DEFAULT_HEAD


def _data(record: Mapping, path: Path, key: str) -> None:
    """A dataset record (cxr.provenance) at `key` where present: its fingerprint and stored size; null allowed (a
    training from before the records)."""
    if not _has(record, key) or _value(record, path, key) is None:
        return
    _string(record, path, f"{key}.fingerprint")
    _number(record, path, f"{key}.stored_size", 1, settings.MAX_IMAGE_SIZE, integer=True)


def _model(record: Mapping, path: Path, key: str) -> None:
    """A training record (cxr.provenance) at `key`: its id, backbone and seed, which the checks and messages use."""
    _string(record, path, f"{key}.training_id")
    _string(record, path, f"{key}.backbone")
    _string(record, path, f"{key}.regime", settings.REGIMES)
    _number(record, path, f"{key}.seed", integer=True)
    _string(record, path, f"{key}.folder")


def _interval(record: Mapping, path: Path, key: str) -> None:
    """[low, high], each end a finite number or null (no resample defined the statistic)."""
    interval = _value(record, path, key)
    if not (isinstance(interval, list) and len(interval) == 2 and all(
            v is None or (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v))
            for v in interval)):
        _fail(path, f"{key} is {interval!r}; expected [low, high], each a finite number or null")


def read_metrics(path: Path) -> dict:
    """metrics.json (cxr evaluate): the test metrics of one backbone and seed, with both thresholds. Adds
    `regime` ("finetune" where the file predates regimes) and `head` ("seed" where it predates the probes)."""
    path = Path(path)
    metrics = _object(path, "`cxr evaluate`")
    _string(metrics, path, "backbone")
    metrics["regime"] = _regime(metrics, path, "regime")
    metrics["head"] = _head(metrics, path, "head")
    for name in ("default", "validation"):
        _number(metrics, path, f"thresholds.{name}", 0, 1)
    _number(metrics, path, "test_images", 1, integer=True)
    _number(metrics, path, "loss", 0)
    _number(metrics, path, "roc_auc.value", 0, 1, nullable=True)
    _interval(metrics, path, "roc_auc.ci95")
    _number(metrics, path, "validation.loss", 0)
    _number(metrics, path, "validation.roc_auc", 0, 1, nullable=True)
    for name in ("default", "validation"):
        at = f"at_{name}_threshold"
        for metric in _THRESHOLD_METRICS:
            _number(metrics, path, f"{at}.{metric}.value", 0, 1, nullable=True)
            _interval(metrics, path, f"{at}.{metric}.ci95")
        matrix = _value(metrics, path, f"{at}.confusion_matrix")
        if not (isinstance(matrix, list) and len(matrix) == 2 and all(
                isinstance(row, list) and len(row) == 2 and all(
                    isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in row) for row in matrix)):
            _fail(path, f"{at}.confusion_matrix is {matrix!r}; expected [[TN, FP], [FN, TP]] of counts")
    if _has(metrics, "provenance.model"):  # what was evaluated, on what (cxr.provenance); absent in older files
        _model(metrics, path, "provenance.model")
    _data(metrics, path, "provenance.trained_on")
    _data(metrics, path, "provenance.data")
    return metrics


def read_train_metrics(path: Path) -> dict:
    """train_metrics.json (cxr train): the backbone, its input size, the best epoch's scores, the learning time
    and the settings. Adds settings.regime ("finetune" where the file predates regimes) and settings.head ("seed"
    where it predates the probes)."""
    path = Path(path)
    trained = _object(path, "`cxr train`")
    _string(trained, path, "backbone")
    _number(trained, path, "image_size", 1, settings.MAX_IMAGE_SIZE, integer=True)
    for name in HISTORY_COLUMNS[1:]:
        _number(trained, path, f"best.{name}", 0)
    _number(trained, path, "best_epoch", 0, integer=True)
    _number(trained, path, "epochs_run", 0, integer=True)
    _number(trained, path, "learning_time_seconds", 0)
    _string(trained, path, "learning_time")
    if "feature_seconds" in trained:  # a frozen training's feature extraction
        _number(trained, path, "feature_seconds", 0)
    options = _value(trained, path, "settings")
    if not isinstance(options, dict):
        _fail(path, f"settings is {options!r}; expected an object")
    _number(trained, path, "settings.seed", integer=True)
    _number(trained, path, "settings.dense_units", 1, integer=True)
    _number(trained, path, "settings.dropout", 0, 1)
    _number(trained, path, "settings.learning_rate")  # the report chooses among a row's learning rates
    options["regime"] = _regime(trained, path, "settings.regime")
    options["head"] = _head(trained, path, "settings.head")
    _data(trained, path, "provenance.data")  # the data it was trained on (cxr.provenance); absent in older files
    return trained


def read_preprocessing(path: Path) -> dict[str, int]:
    """preprocessing.json (cxr train): processed_size (the stored films' size) and image_size (the model's
    input), the two resizes a new film must go through."""
    path = Path(path)
    record = _object(path, "`cxr train`")
    return {key: _number(record, path, key, 1, settings.MAX_IMAGE_SIZE, integer=True)
            for key in ("processed_size", "image_size")}


def read_stats(path: Path) -> dict:
    """stats.json (cxr preprocess): films per split and class, and the settings (image_size) they were stored
    with."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing {path} (run `cxr preprocess` first)")
    stats = read_json(path)
    for split in settings.SPLITS:
        for name in settings.CLASS_NAMES:
            _number(stats, path, f"counts.{split}.{name}", 0, integer=True)
    _number(stats, path, "settings.image_size", 1, settings.MAX_IMAGE_SIZE, integer=True)
    if stats.get("dataset") is not None:  # the fingerprint and origin (cxr.provenance); absent in older files
        _data(stats, path, "dataset")
        if stats["dataset"]["stored_size"] != stats["settings"]["image_size"]:
            _fail(path, f"dataset.stored_size {stats['dataset']['stored_size']} is not settings.image_size "
                        f"{stats['settings']['image_size']}")
    return stats


def read_failure(folder: Path) -> Failure | None:
    """The failure recorded in `folder` (failure.json, cxr.failures), or None when it holds none."""
    path = Path(folder) / files.FAILURE
    if not path.is_file():
        return None
    try:
        record = read_json(path)
        failure = Failure(_string(record, path, "backbone"), _number(record, path, "seed", integer=True),
                          _string(record, path, "stage"), str(_value(record, path, "reason")),
                          _regime(record, path, "regime"), _head(record, path, "head"),
                          _number(record, path, "learning_rate") if _has(record, "learning_rate") else None)
    except UserError as error:
        raise UserError(f"{path} is not a failure record ({str(error).removeprefix(f'{path}: ')}): it needs "
                        "backbone, seed, stage, reason") from None
    if failure.stage not in STAGES:
        _fail(path, f"stage must be one of {', '.join(STAGES)}, not {failure.stage!r}")
    return failure


def read_explain_summary(path: Path) -> dict:
    """explain.json (cxr explain): the backbone, the layer and grid of its heatmaps, and the pointing game where
    lesions were known."""
    path = Path(path)
    summary = _object(path, "`cxr explain`")
    _string(summary, path, "backbone")
    _string(summary, path, "layer")
    grid = _value(summary, path, "grid")
    if not (isinstance(grid, list) and len(grid) == 2 and all(isinstance(v, int) and v > 0 for v in grid)):
        _fail(path, f"grid is {grid!r}; expected [rows, columns]")
    if "pointing_game" in summary:
        for key in ("hit_rate", "random_rate"):
            _number(summary, path, f"pointing_game.{key}", 0, 1, nullable=True)
        _number(summary, path, "pointing_game.films", 0, integer=True)
    if "provenance" in summary:  # the training explained and the data (cxr.provenance); absent in older files
        _model(summary, path, "provenance.model")
        _value(summary, path, "provenance.data")
        _data(summary, path, "provenance.data")
    return summary


@dataclass(frozen=True)
class Explanation:
    """The --out folder of one finished `cxr explain`: its summary, its films' table, heatmaps and films."""
    folder: Path
    summary: dict
    films: pd.DataFrame
    heatmaps: np.ndarray  # [films, size, size] in [0, 1]
    pixels: np.ndarray  # [films, size, size] uint8

    @property
    def backbone(self) -> str:
        return self.summary["backbone"]


def _array(path: Path, made_by: str) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"missing {path} (written by {made_by})")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        _fail(path, f"is not a readable .npy array ({type(error).__name__}); write it again with {made_by}")


def read_explanation(folder: Path, option: str = "--explanations") -> Explanation:
    """The folder of a finished `cxr explain`, every file checked: explain.json, <Backbone>_gradcam.csv and the
    two arrays, one heatmap and one film per row of the table, all at the model's input size."""
    folder = Path(folder)
    made_by = "`cxr explain`"
    if not folder.is_dir():
        raise UserError(f"{option} {folder}: no such folder (the --out folder of `cxr explain`)")
    if unfinished(folder, "explain"):
        raise UserError(f"{option} {folder}: the `cxr explain` that wrote it did not finish; run it again")
    if not (folder / files.EXPLAIN_SUMMARY).is_file():
        raise UserError(f"{option} {folder}: holds no {files.EXPLAIN_SUMMARY}; not the --out folder of a "
                        "finished `cxr explain`")
    summary = read_explain_summary(folder / files.EXPLAIN_SUMMARY)
    backbone = summary["backbone"]
    table = read_gradcam_films(folder / files.gradcam_films(backbone))
    heatmaps = _array(folder / files.gradcam_heatmaps(backbone), made_by)
    pixels = _array(folder / files.explained_films(backbone), made_by)
    for path, array in ((folder / files.gradcam_heatmaps(backbone), heatmaps),
                        (folder / files.explained_films(backbone), pixels)):
        if array.ndim != 3 or len(array) != len(table) or array.shape[1] != array.shape[2]:
            _fail(path, f"has shape {list(array.shape)}; expected [{len(table)} films, size, size], one per row of "
                        f"{files.gradcam_films(backbone)}")
    if heatmaps.shape != pixels.shape:
        _fail(folder / files.gradcam_heatmaps(backbone), f"has shape {list(heatmaps.shape)}, its films "
                                                          f"{list(pixels.shape)}")
    if not np.all(np.isfinite(heatmaps)) or heatmaps.min() < 0 or heatmaps.max() > 1:
        _fail(folder / files.gradcam_heatmaps(backbone), "holds values outside [0, 1]")
    return Explanation(folder, summary, table, heatmaps, pixels)
