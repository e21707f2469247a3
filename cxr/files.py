"""The names of the files the steps hand to each other: one place, so that a producer and its readers agree."""

import os

from cxr import settings

# ingest
INGEST_MARKER = "ingest.json"  # written last: its presence means the folder holds a complete ingest
# preprocess
MANIFEST = "manifest.csv"
STATS = "stats.json"
# train
MODEL = "model.keras"
HISTORY = "history.csv"
PREPROCESSING = "preprocessing.json"  # the sizes a film is decoded and resized to: what predict and export repeat
TRAIN_METRICS = "train_metrics.json"
CHECKPOINT_DIR = "checkpoint"
# The frozen regime's head on the cached validation and test features: split, patient_id, source, label,
# probability. `cxr evaluate` reads it instead of running the backbone over those films again.
HEAD_PREDICTIONS = "head_predictions.csv"
# Written instead of metrics.json by a backbone/seed that failed to train or evaluate (cxr.failures):
# {"backbone": str, "seed": int, "stage": "train" | "evaluate", "reason": str}
FAILURE = "failure.json"
# evaluate
METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"  # test films
VAL_PREDICTIONS = "val_predictions.csv"  # validation films: the ensemble's threshold is chosen on them
ROC = "roc.csv"
# synth
LESIONS = "lesions.csv"  # the box of every opacity drawn, beside the chest_xray/ splits
# Beside the splits too: says the films are drawn, not radiographs; ingest carries it into its folder and records it
# in ingest.json, preprocess in stats.json's "dataset", and the model card says so.
SYNTHETIC_MARKER = "cxr-synthetic.json"
# explain
EXPLAIN_SUMMARY = "explain.json"
GRADCAM_COMPARISON = "gradcam_comparison.png"
# export
SAVED_MODEL = "saved_model"  # the folder TF Serving and KServe load (with a version subfolder, 1/)
# report
COMPARISON_PLOT = "compared_model_graph.png"  # the seed's name (its section 5)
ROC_PLOT = "roc_curves.png"
CONFUSION_PLOT = "confusion_matrices.png"
CALIBRATION_PLOT = "calibration.png"  # reliability diagram
TUNING_CSV = "tuning.csv"  # every learning-rate candidate of every row, the chosen one marked
TUNING_PLOT = "learning_rate_search.png"  # validation ROC AUC against the learning rate per row
ENSEMBLE_METRICS = "ensemble_metrics.json"  # the ensemble's metrics.json
LEADERBOARD_CSV = "leaderboard.csv"
LEADERBOARD_MD = "leaderboard.md"
REPORT_HTML = "report.html"


def loss_acc_graph(backbone: str, regime: str = settings.DEFAULT_REGIME, head: str = settings.DEFAULT_HEAD) -> str:
    """The seed's name (its section 4) for a fine-tuned backbone with its head; another regime's or head's carries
    them."""
    variant = "".join(f"_{part}" for part, default in ((regime, settings.DEFAULT_REGIME),
                                                       (head, settings.DEFAULT_HEAD)) if part != default)
    return f"{backbone}{variant}_loss_acc_graph.png"


def gradcam_panel(backbone: str) -> str:
    return f"{backbone}_gradcam.png"


def gradcam_heatmaps(backbone: str) -> str:
    return f"{backbone}_gradcam.npy"


def gradcam_films(backbone: str) -> str:
    return f"{backbone}_gradcam.csv"  # one row per heatmap in the .npy, in its order


def explained_films(backbone: str) -> str:
    return f"{backbone}_films.npy"  # the films under the heatmaps, uint8, as the model saw them


def shown_name(path: os.PathLike | str) -> str:
    """A file name as text that can be written anywhere: bytes that are not UTF-8 (a name from another
    system's encoding, which Python holds as lone surrogates) are shown as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


# Why a film with such a name is skipped: its name could not be written into the manifest, a TFRecord or JSON.
NOT_UTF8_NAME = "its name is not UTF-8 (bytes of another system's encoding, shown as \\xNN): rename it to include it"


def is_utf8_name(path: os.PathLike | str) -> bool:
    """Whether a file name is UTF-8 text: what manifests, TFRecords and JSON can hold as it is."""
    return shown_name(path) == os.fspath(path)
