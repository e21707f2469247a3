"""One KFP component per pipeline step. Each is a thin wrapper: resolve artifact paths, call the `cxr` library,
write outputs and metadata. All run in the project image (settings.COMPONENT_IMAGE), which already has kfp."""

from components.aggregate import aggregate_results
from components.evaluate import evaluate_backbone
from components.explain import explain_backbone
from components.ingest import ingest_dataset
from components.plan import plan_trainings
from components.preprocess import preprocess_dataset
from components.train import train_backbone
from components.verdict import verdict

__all__ = ["aggregate_results", "evaluate_backbone", "explain_backbone", "ingest_dataset", "plan_trainings",
           "preprocess_dataset", "train_backbone", "verdict"]
