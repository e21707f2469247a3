from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from cxr import settings


@dsl.component(base_image=settings.COMPONENT_IMAGE, install_kfp_package=False)
def train_backbone(processed: Input[Dataset], backbone: str, epochs: int, batch_size: int, learning_rate: float,
                   dense_units: int, dropout: float, image_size: int, weights: str, patience: int, seed: int,
                   checkpoint_root: str, run_id: str, model: Output[Model], train_metrics: Output[Metrics]):
    """Train one backbone; with `checkpoint_root` on a volume, a retried task resumes from its last epoch."""
    import tempfile
    from pathlib import Path

    from cxr.train import TrainSettings, train

    options = TrainSettings(backbone=backbone, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                            dense_units=dense_units, dropout=dropout, image_size=image_size, weights=weights,
                            patience=patience, seed=seed)
    root = Path(checkpoint_root) if checkpoint_root else Path(tempfile.mkdtemp(prefix="checkpoint-"))
    metrics = train(processed.path, model.path, options, checkpoint=root / run_id / backbone.lower())
    model.metadata.update({"backbone": metrics["backbone"], "image_size": metrics["image_size"],
                           "framework": "keras", "device": metrics["device"]})
    for name, value in metrics["best"].items():
        train_metrics.log_metric(name, round(value, 4))
    for name in ("epochs_run", "best_epoch", "learning_time_seconds", "images_per_second"):
        train_metrics.log_metric(name, round(float(metrics[name]), 2))
