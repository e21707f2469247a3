"""A trained model folder as the serving side needs it: the model, the preprocessing it was trained with and
the decision threshold chosen on validation.

`cxr train` writes model.keras, train_metrics.json and preprocessing.json; `cxr evaluate` writes metrics.json
with the threshold (`thresholds.validation`). The two may share a folder, or not: the threshold is taken from,
in this order, an explicit value, a result folder, or a metrics.json beside the model.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr import artifacts, files, provenance, settings
from cxr.errors import UserError
from cxr.outputs import RECORD, unfinished

# The weights inside a .keras archive (Keras' saving format: config.json, metadata.json and this).
KERAS_WEIGHTS_MEMBER = "model.weights.h5"


@dataclass(frozen=True)
class Preprocessing:
    """The two resizes a film goes through: to the stored size (`cxr preprocess`), then to the model's input."""

    processed_size: int  # stats.json settings.image_size of the data the model was trained on
    image_size: int  # the model's input


def write_preprocessing(model_dir: Path, data_dir: Path, image_size: int) -> None:
    """Record in model_dir what preprocessing a model trained on data_dir at image_size expects."""
    stats = artifacts.read_stats(Path(data_dir) / files.STATS)
    prep = Preprocessing(int(stats["settings"]["image_size"]), int(image_size))
    (Path(model_dir) / files.PREPROCESSING).write_text(json.dumps(prep.__dict__, indent=2))


def check_model_folder(model_dir: Path) -> None:
    """--model is the folder of a finished `cxr train`, or one line saying what it is instead: missing, a file,
    a training still running or stopped (its output record says unfinished), an evaluation's folder."""
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise UserError(f"--model {model_dir} does not exist: give the --out folder of `cxr train`")
    if not model_dir.is_dir():
        raise UserError(f"--model {model_dir} is a file: give the --out folder of `cxr train`, not a file in it")
    if unfinished(model_dir, "train"):
        raise UserError(f"--model {model_dir}: its training has not finished (its {RECORD} says so): "
                        "wait for `cxr train` to end, or rerun it on the same --out to resume")
    if not (model_dir / files.MODEL).exists() and (model_dir / files.METRICS).is_file():
        raise UserError(f"--model {model_dir} is the folder of `cxr evaluate`: give --model the folder of `cxr "
                        "train` (and this one as --result)")


def read_preprocessing(model_dir: Path) -> Preprocessing:
    check_model_folder(model_dir)
    path = Path(model_dir) / files.PREPROCESSING
    if not path.is_file():
        raise UserError(f"missing {path}: --model must be a folder `cxr train` wrote (retrain models older than "
                        "this file)")
    return Preprocessing(**artifacts.read_preprocessing(path))


def load_model(model_dir: Path):
    """model_dir's model.keras rebuilt in float32: a model trained in mixed precision on a GPU predicts at full
    speed and precision on a CPU, and gives the probabilities `cxr evaluate` gives."""
    import keras

    from cxr.training.backbones import get_backbone
    from cxr.training.model import build_model

    model_dir = Path(model_dir)
    check_model_folder(model_dir)
    for name in (files.MODEL, files.TRAIN_METRICS):
        if not (model_dir / name).is_file():
            raise UserError(f"missing {model_dir / name}: --model must be a folder `cxr train` wrote")
    trained = artifacts.read_train_metrics(model_dir / files.TRAIN_METRICS)
    keras.mixed_precision.set_global_policy("float32")
    options = trained["settings"]
    probe = trained.get("probe") or {}  # a kNN probe's layer is sized by its reference films and k
    model = build_model(get_backbone(trained["backbone"]), trained["image_size"], dense_units=options["dense_units"],
                        dropout=options["dropout"], weights="none",
                        head=options.get("head", settings.DEFAULT_HEAD), references=probe.get("references", 0),
                        neighbours=int(probe.get("value", 0)) if probe.get("parameter") == "k" else 0)
    load_weights_of_archive(model, model_dir / files.MODEL)
    return model


def load_weights_of_archive(model, archive_path: Path) -> None:
    """A .keras archive's weights into `model`, read from a temporary copy of the archive's weights file; a damaged
    archive, or no room for the copy, is one line. Given the archive itself, Keras hands h5py the zip member as a
    Python file object, and h5py's many small reads through it took 5x as long as from the extracted file for
    InceptionV3 (benchmarks/model_io.py)."""
    damaged = f"{archive_path} is damaged; train again into a new folder"
    try:
        with zipfile.ZipFile(archive_path) as archive, tempfile.TemporaryDirectory(prefix="cxr-weights-") as folder:
            try:
                weights = archive.extract(KERAS_WEIGHTS_MEMBER, folder)
            except KeyError:
                raise UserError(f"{damaged} (it holds no {KERAS_WEIGHTS_MEMBER})") from None
            except (zipfile.BadZipFile, EOFError) as error:
                raise UserError(f"{damaged} ({type(error).__name__}: {error})") from None
            except OSError as error:  # writing the copy: the archive's own faults are BadZipFile or EOFError
                raise UserError(f"{archive_path}: its weights could not be unpacked into {tempfile.gettempdir()} "
                                f"({error.strerror or error}); make room there, or point TMPDIR elsewhere") from None
            model.load_weights(weights)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise UserError(f"{damaged} ({type(error).__name__})") from None


def backbone_name(model_dir: Path) -> str:
    return artifacts.read_train_metrics(Path(model_dir) / files.TRAIN_METRICS)["backbone"]


def find_threshold(model_dir: Path, result_dir: Path | None = None, threshold: float | None = None) -> float:
    """The decision threshold: `threshold` when given, else `thresholds.validation` of result_dir's metrics.json,
    else of a metrics.json in model_dir (train and evaluate writing to one folder). A result of another model's
    evaluation is refused in one line naming both (cxr.provenance)."""
    check_model_folder(model_dir)
    if threshold is not None:
        if not 0 <= threshold <= 1:
            raise UserError(f"--threshold must be in [0, 1], got {threshold}")
        return float(threshold)
    folder = Path(result_dir) if result_dir is not None else Path(model_dir)
    if unfinished(folder, "evaluate"):
        raise UserError(f"{folder}: its evaluation has not finished (its {RECORD} says so): wait for "
                        "`cxr evaluate` to end, or rerun it")
    path = folder / files.METRICS
    if not path.is_file():
        raise UserError(f"no {files.METRICS} in {folder}: pass --result (the --out folder of `cxr evaluate`) or "
                        "--threshold")
    metrics = artifacts.read_metrics(path)
    provenance.check_result_of(model_dir, folder)
    return metrics["thresholds"]["validation"]


def decode_bytes(data: bytes, prep: Preprocessing) -> np.ndarray:
    """An encoded JPEG or PNG of any size and mode as the model's input, uint8 [size, size, 1], through the same
    functions as `cxr preprocess` and the training reader. Raises UnreadableImage."""
    from cxr.data.images import decode_resized
    from cxr.data.reader import decode_film

    stored = decode_resized(data, prep.processed_size)
    return decode_film(stored, prep.image_size).numpy()


def read_film(path: Path, prep: Preprocessing) -> np.ndarray:
    """A film file as the model's input (decode_bytes). Raises UnreadableImage or OSError."""
    return decode_bytes(Path(path).read_bytes(), prep)


def decide(probabilities, threshold: float) -> list[str]:
    """The class name of each probability at `threshold`: PNEUMONIA when P >= threshold, compared in float64.

    The one decision rule of predict, the server and (in TensorFlow ops) the export, and the comparison `cxr
    evaluate` counts with (float64 probabilities >= the float64 threshold). float64 matters: the validation
    threshold may sit one float64 step above the highest validation probability ("no film reaches it"), a step a
    float32 comparison rounds away, turning NORMAL into PNEUMONIA."""
    positive = np.asarray(probabilities, dtype=np.float64) >= np.float64(threshold)
    return [settings.CLASS_NAMES[int(p)] for p in np.atleast_1d(positive)]


def probabilities_of(model, films: list[np.ndarray], batch_size: int) -> np.ndarray:
    """P(pneumonia) of each film (the model's inputs), float64, in batches of `batch_size` as `cxr predict` and
    the server run them."""
    scores = [np.asarray(model.predict_on_batch(np.stack(films[start:start + batch_size]))).reshape(-1)
              for start in range(0, len(films), batch_size)]
    return np.concatenate(scores).astype(np.float64) if scores else np.zeros(0, np.float64)
