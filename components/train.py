from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from cxr import settings


@dsl.component(base_image=settings.COMPONENT_IMAGE, install_kfp_package=False)
def train_backbone(processed: Input[Dataset], backbone: str, epochs: int, batch_size: int, learning_rate: float,
                   dense_units: int, dropout: float, image_size: int, weights: str, patience: int, seed: int,
                   checkpoint_root: str, run_id: str, model: Output[Model], train_metrics: Output[Metrics]):
    """Train one backbone; with `checkpoint_root` on a volume, a retried task resumes from its last epoch."""
    from cxr.training.train import TrainSettings, headline_metrics, pipeline_checkpoint, train

    options = TrainSettings(backbone=backbone, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                            dense_units=dense_units, dropout=dropout, image_size=image_size, weights=weights,
                            patience=patience, seed=seed)
    metrics = train(processed.path, model.path, options,
                    checkpoint=pipeline_checkpoint(checkpoint_root, run_id, backbone))
    model.metadata.update({"backbone": metrics["backbone"], "image_size": metrics["image_size"],
                           "framework": "keras", "device": metrics["device"]})
    for name, value in headline_metrics(metrics).items():
        train_metrics.log_metric(name, value)
