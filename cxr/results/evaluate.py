"""`cxr evaluate`: one trained model on the test split, written as a result folder for `cxr report`.

The metrics (cxr.results.metrics): sensitivity, specificity and ROC AUC beside accuracy, each with a 95 % interval
from a bootstrap over patients, at 0.5 and at a threshold chosen on validation, never on test.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from cxr import artifacts, files, provenance, settings
from cxr.errors import UserError
from cxr.failures import Failure, write_failure
from cxr.outputs import claim, write_atomically
from cxr.results.metrics import json_safe, roc_curve, summarize


def predict(model, data_dir: Path, split: str, image_size: int, batch_size: int) -> pd.DataFrame:
    """One row per image of the split: patient_id, source, label, probability."""
    from cxr.data.reader import read_split

    rows = []
    for batch in read_split(data_dir, split, image_size, batch_size, with_metadata=True):
        # numpy, not a TensorFlow tensor: the model may run on another Keras backend (JAX).
        probabilities = np.asarray(model.predict_on_batch(batch["image"].numpy())).reshape(-1)
        rows.append(pd.DataFrame({
            "patient_id": [v.decode() for v in batch["patient_id"].numpy()],
            "source": [v.decode() for v in batch["source"].numpy()],
            "label": batch["label"].numpy().astype(int),
            "probability": probabilities.astype(float),
        }))
    return pd.concat(rows, ignore_index=True)


def evaluate(data_dir: Path, model_dir: Path, out: Path, batch_size: int = settings.BATCH_SIZE,
             samples: int = settings.BOOTSTRAP_SAMPLES) -> dict:
    """Evaluate model_dir's model.keras on the test split; write metrics.json, predictions.csv, roc.csv and
    val_predictions.csv (on which the report's ensemble chooses its threshold) to `out`, with the training's
    history.csv and train_metrics.json beside them, so that `out` is one complete result for `cxr report`.
    A rerun on a finished `out` reuses it."""
    model_dir, out = Path(model_dir), Path(out)
    if not 1 <= batch_size <= settings.MAX_BATCH_SIZE:
        raise UserError(f"--batch-size must be between 1 and {settings.MAX_BATCH_SIZE}, got {batch_size}")
    for name in (files.MODEL, files.TRAIN_METRICS, files.HISTORY):
        if not (model_dir / name).is_file():
            raise UserError(f"missing {model_dir / name} (run `cxr train` first)")
    trained = artifacts.read_train_metrics(model_dir / files.TRAIN_METRICS)
    # Before the claim, so that a wrong --data leaves --out free for the right one.
    provenance.check_stored_size(model_dir, data_dir)
    record = provenance.evaluation_record(model_dir, data_dir)
    with claim(out, "evaluate", {"model": str(model_dir.resolve())}) as output:
        if output.finished and (out / files.METRICS).is_file():
            print(f"evaluate: {out} already holds this evaluation; reusing it", file=sys.stderr)
            return artifacts.read_metrics(out / files.METRICS)
        if "train" in output.others and out.resolve() != model_dir.resolve():
            raise UserError(f"--out {out} holds another training; evaluate into its own folder or into the "
                            "training's folder")
        metrics = _evaluate(data_dir, model_dir, trained, out, batch_size, samples, record)
        output.finish()
    return metrics


def _evaluate(data_dir: Path, model_dir: Path, trained: dict, out: Path, batch_size: int, samples: int,
              record: dict) -> dict:
    from cxr.serving.trained import load_model
    from cxr.training.features import saved_head_predictions
    from cxr.training.plan import canonical_backbone

    backbone = canonical_backbone(trained["backbone"])  # the registry's spelling, without loading Keras
    # A frozen backbone's head already predicted every validation and test film from the feature cache: the
    # same probabilities as the whole model's (tests/test_regimes.py), without a second pass of the backbone.
    cached = saved_head_predictions(model_dir, data_dir, trained)
    if cached is not None:
        print(f"evaluate: the head's predictions on the cached features ({files.HEAD_PREDICTIONS})", file=sys.stderr)
        val, test = cached
    else:
        # Rebuilt in float32 and loaded with the trained weights: a model trained in mixed precision on a GPU
        # evaluates at full speed on a CPU, where float16 kernels are slow.
        model = load_model(model_dir)
        read = dict(data_dir=data_dir, image_size=trained["image_size"], batch_size=batch_size)
        val, test = predict(model, split="val", **read), predict(model, split="test", **read)
    metrics = json_safe({"backbone": backbone, "regime": trained["settings"]["regime"],
                         "head": trained["settings"]["head"],
                         **summarize(test, val, samples), "provenance": record})

    out.mkdir(parents=True, exist_ok=True)
    test.to_csv(out / files.PREDICTIONS, index=False)
    val.to_csv(out / files.VAL_PREDICTIONS, index=False)
    roc_curve(test["label"], test["probability"]).to_csv(out / files.ROC, index=False)
    for name in (files.TRAIN_METRICS, files.HISTORY):
        if model_dir.resolve() != out.resolve():
            shutil.copyfile(model_dir / name, out / name)
    write_atomically(out / files.METRICS, json.dumps(metrics, indent=2, allow_nan=False))  # last: the result is whole
    return metrics


def evaluation_scalars(metrics: dict) -> dict[str, float]:
    """The test scalars a dashboard shows (the KFP UI's metrics table), rounded; undefined ones left out."""
    flat = {"roc_auc": metrics["roc_auc"]["value"], "test_loss": metrics["loss"],
            "validation_threshold": metrics["thresholds"]["validation"]}
    for name, prefix in (("default", ""), ("validation", "val_threshold_")):
        for metric in ("accuracy", "sensitivity", "specificity", "precision", "f1"):
            flat[prefix + metric] = metrics[f"at_{name}_threshold"][metric]["value"]
    return {name: round(value, 4) for name, value in flat.items() if value is not None}


def roc_points(result_dir: Path, max_points: int = 200) -> dict[str, list[float]]:
    """The test ROC curve of a result folder, thinned to at most `max_points` (ends kept) for the KFP UI."""
    curve = artifacts.read_roc(Path(result_dir) / files.ROC)
    keep = np.unique(np.linspace(0, len(curve) - 1, min(max_points, len(curve))).round().astype(int))
    return {column: curve[column].iloc[keep].astype(float).tolist() for column in ("fpr", "tpr", "threshold")}


def evaluate_or_record_failure(data_dir: Path, model_dir: Path, out: Path,
                               batch_size: int = settings.BATCH_SIZE) -> dict | Failure:
    """What a pipeline's evaluate step does: the metrics, or a Failure written into `out` (the training's
    failure passed on, or this evaluation's own error), so that the comparison goes on without this backbone."""
    failure = artifacts.read_failure(model_dir)
    if failure is None:
        try:
            return evaluate(data_dir, model_dir, out, batch_size=batch_size)
        except Exception as error:  # any error here costs one backbone, not the whole comparison
            try:
                trained = artifacts.read_train_metrics(Path(model_dir) / files.TRAIN_METRICS)
            except UserError:
                trained = {}
            failure = Failure(trained.get("backbone", "unknown"), trained.get("settings", {}).get("seed", -1),
                              "evaluate", f"{type(error).__name__}: {error}".splitlines()[0],
                              trained.get("settings", {}).get("regime", settings.DEFAULT_REGIME),
                              trained.get("settings", {}).get("head", settings.DEFAULT_HEAD),
                              trained.get("settings", {}).get("learning_rate"))
    write_failure(out, failure)
    return failure

