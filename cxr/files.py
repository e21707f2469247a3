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
# train or evaluate, for a backbone that failed for good (cxr.failures)
FAILURE = "failure.json"
# evaluate
METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"
ROC = "roc.csv"
# report
COMPARISON_PLOT = "compared_model_graph.png"  # the seed's name (its section 5)
ROC_PLOT = "roc_curves.png"
CONFUSION_PLOT = "confusion_matrices.png"
LEADERBOARD_CSV = "leaderboard.csv"
LEADERBOARD_MD = "leaderboard.md"
REPORT_HTML = "report.html"


def loss_acc_graph(backbone: str) -> str:
    return f"{backbone}_loss_acc_graph.png"  # the seed's name (its section 4)
