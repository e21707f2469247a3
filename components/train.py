from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from cxr import settings


@dsl.component(base_image=settings.COMPONENT_IMAGE, install_kfp_package=False)
def train_backbone(processed: Input[Dataset], backbone: str, epochs: int, batch_size: int, learning_rate: float,
                   dense_units: int, dropout: float, image_size: int, weights: str, regime: str, head: str,
                   patience: int, seed: int, device: str, checkpoint_root: str, run_id: str, model: Output[Model],
                   train_metrics: Output[Metrics]):
    """Train one backbone in a watched child process: a crash resumes from the last epoch (with `checkpoint_root`
    on a volume, a retried pod too); a training that fails for good leaves failure.json for the report. A frozen
    training keeps its features on the checkpoint volume, where the other seeds and later runs find them.

    The training options are TrainSettings' pipeline and per-run options, under their own names
    (tests/test_options.py checks that they match)."""
    from cxr import settings
    from cxr.training.plan import TrainSettings, dashboard_scalars, pipeline_checkpoint, pipeline_features
    from cxr.training.supervise import train_supervised

    options = TrainSettings.from_values(locals())
    outcome = train_supervised(processed.path, model.path, options, device=device, attempts=settings.TRAIN_ATTEMPTS,
                               checkpoint=pipeline_checkpoint(checkpoint_root, run_id, backbone, regime,
                                                               learning_rate, seed, head),
                               features=pipeline_features(checkpoint_root))
    model.metadata.update({"backbone": backbone, "regime": regime, "head": head, "learning_rate": learning_rate,
                           "seed": seed})
    if outcome.failure:  # failure.json is in the model folder: evaluate passes it on to the report
        model.metadata["failure"] = outcome.failure
        return
    metrics = outcome.metrics
    model.metadata.update({"image_size": metrics["image_size"], "framework": "keras", "device": metrics["device"],
                           "feature_seconds": metrics["feature_seconds"]})
    for name, value in dashboard_scalars(metrics).items():
        train_metrics.log_metric(name, value)
