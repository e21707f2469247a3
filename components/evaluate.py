from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from cxr import settings


@dsl.component(base_image=settings.COMPONENT_IMAGE, install_kfp_package=False)
def evaluate_backbone(processed: Input[Dataset], model: Input[Model], batch_size: int, result: Output[Artifact],
                      metrics: Output[Metrics], classification: Output[ClassificationMetrics]):
    """Evaluate on the test split; the KFP UI draws the confusion matrix and the ROC curve. A failed training (or
    evaluation) is passed on as the result's failure.json, for the report."""
    from cxr import settings
    from cxr.failures import Failure
    from cxr.results.evaluate import evaluate_or_record_failure, evaluation_scalars, roc_points

    evaluation = evaluate_or_record_failure(processed.path, model.path, result.path, batch_size=batch_size)
    if isinstance(evaluation, Failure):
        result.metadata.update({"backbone": evaluation.backbone, "regime": evaluation.regime,
                                "head": evaluation.head, "seed": evaluation.seed, "failure": evaluation.reason})
        return
    result.metadata.update({"backbone": evaluation["backbone"], "regime": evaluation["regime"],
                            "head": evaluation["head"]})
    for name, value in evaluation_scalars(evaluation).items():
        metrics.log_metric(name, value)
    classification.log_confusion_matrix(list(settings.CLASS_NAMES),
                                        evaluation["at_default_threshold"]["confusion_matrix"])
    points = roc_points(result.path)
    classification.log_roc_curve(points["fpr"], points["tpr"], points["threshold"])
