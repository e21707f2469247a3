"""The names of the files the steps hand to each other: one place, so that a producer and its readers agree."""

# ingest
INGEST_MARKER = "ingest.json"  # written last: its presence means the folder holds a complete ingest
# preprocess
MANIFEST = "manifest.csv"
STATS = "stats.json"
# train
MODEL = "model.keras"
HISTORY = "history.csv"
TRAIN_METRICS = "train_metrics.json"
CHECKPOINT_DIR = "checkpoint"
# Written instead of metrics.json by a backbone/seed that failed to train or evaluate (cxr.failures):
# {"backbone": str, "seed": int, "stage": "train" | "evaluate", "reason": str}
FAILURE = "failure.json"
# evaluate
METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"  # test films
VAL_PREDICTIONS = "val_predictions.csv"  # validation films: the ensemble's threshold is chosen on them
ROC = "roc.csv"
# report
COMPARISON_PLOT = "compared_model_graph.png"  # the seed's name (its section 5)
ROC_PLOT = "roc_curves.png"
CONFUSION_PLOT = "confusion_matrices.png"
CALIBRATION_PLOT = "calibration.png"  # reliability diagram
ENSEMBLE_METRICS = "ensemble_metrics.json"  # the ensemble's metrics.json
LEADERBOARD_CSV = "leaderboard.csv"
LEADERBOARD_MD = "leaderboard.md"
REPORT_HTML = "report.html"


def loss_acc_graph(backbone: str) -> str:
    return f"{backbone}_loss_acc_graph.png"  # the seed's name (its section 4)
