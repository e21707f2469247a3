"""The pipeline: plan -> ingest -> preprocess -> for each backbone, regime, head, learning rate and seed in parallel
(train -> evaluate -> explain) -> aggregate (each row's learning rate chosen on validation, the report, the model
card, the best model exported) -> verdict.

    python -m pipelines.chest_xray_benchmark [--output pipelines/chest_xray_benchmark.yaml]

compiles it into the YAML that users upload in the KFP UI (`make compile`). What KFP fixes in the YAML is read
from the environment at compile time, through cxr.settings: the image (CXR_IMAGE), the fan-out parallelism
(CXR_PARALLELISM), the GPU node pool (CXR_GPU_NODE_SELECTOR) and the checkpoint volume (CXR_CHECKPOINT_PVC).
"""

import argparse
import sys
from pathlib import Path
from typing import List

from kfp import compiler, dsl, kubernetes
from kfp.dsl import Artifact

from components import (
    aggregate_results,
    evaluate_backbone,
    explain_backbone,
    ingest_dataset,
    plan_trainings,
    preprocess_dataset,
    train_backbone,
    verdict,
)
from cxr import settings
from cxr.errors import UserError
from cxr.training.plan import PIPELINE, TrainSettings

YAML = Path(__file__).with_suffix(".yaml")
CHECKPOINT_MOUNT = "/checkpoints"


def pipeline_options(parameters: dict) -> dict:
    """The pipeline's parameters that are TrainSettings' pipeline options, by name, for every train task."""
    return {option.name: parameters[option.name] for option in TrainSettings.options(PIPELINE)}


def on_gpu_node(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """One GPU on the GPU node pool, with room for TensorFlow's input pipeline and shared memory."""
    key, _, value = settings.GPU_NODE_SELECTOR.partition("=")
    task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
    task.set_cpu_request(settings.TRAIN_CPU).set_memory_request(settings.TRAIN_MEMORY)
    task.set_memory_limit(settings.TRAIN_MEMORY)
    kubernetes.add_node_selector(task, label_key=key, label_value=value)
    kubernetes.add_toleration(task, key=settings.GPU_TOLERATION_KEY, operator="Exists", effect="NoSchedule")
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory")
    return task


def on_tensorflow(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Keras on TensorFlow whichever backend the image trains on: Grad-CAM (explain) and the SavedModel export
    (aggregate) are TensorFlow graphs, and every image carries TensorFlow (it feeds training's input pipeline)."""
    return task.set_env_variable("KERAS_BACKEND", "tensorflow")


def with_kaggle_credentials(task: dsl.PipelineTask) -> None:
    """The optional kaggle-credentials Secret as KAGGLE_USERNAME and KAGGLE_KEY: kagglehub reads them."""
    kubernetes.use_secret_as_env(task, secret_name=settings.KAGGLE_SECRET, optional=True,
                                 secret_key_to_env={"KAGGLE_USERNAME": "KAGGLE_USERNAME", "KAGGLE_KEY": "KAGGLE_KEY"})


@dsl.pipeline(name=settings.PIPELINE_NAME,
              description="Image classifiers on chest X-rays (pneumonia), trained in parallel and compared with "
                          "patient-level splits, sensitivity, specificity and ROC AUC.")
def chest_xray_benchmark(
    source: str = "kaggle",
    cache: str = "",
    backbones: List[str] = list(settings.BACKBONES),
    regimes: List[str] = list(settings.PIPELINE_REGIMES),
    heads: List[str] = list(settings.PIPELINE_HEADS),
    seeds: List[int] = list(settings.SEEDS),
    epochs: int = settings.EPOCHS,
    batch_size: int = settings.BATCH_SIZE,
    learning_rates: List[float] = list(settings.LEARNING_RATES),
    dense_units: int = settings.DENSE_UNITS,
    dropout: float = settings.DROPOUT,
    image_size: int = settings.IMAGE_SIZE,
    weights: str = settings.WEIGHTS,
    patience: int = settings.PATIENCE,
    processed_image_size: int = settings.PROCESSED_IMAGE_SIZE,
    val_fraction: float = settings.VAL_FRACTION,
    split: str = settings.SPLIT_MODE,
    seed: int = settings.SEED,
    device: str = settings.DEVICE,
    explain_films: int = settings.EXPLAIN_FILMS,
    checkpoint_root: str = CHECKPOINT_MOUNT if settings.CHECKPOINT_PVC else "",
) -> Artifact:
    # Names, regimes, heads, learning rates and seeds are checked before anything runs: a typo costs seconds, not an
    # ingest.
    plan = plan_trainings(backbones=backbones, regimes=regimes, heads=heads, learning_rates=learning_rates,
                          seeds=seeds).set_display_name("plan")
    ingest = ingest_dataset(source=source, cache=cache).set_display_name("ingest").after(plan)
    with_kaggle_credentials(ingest)

    preprocess = preprocess_dataset(raw=ingest.outputs["raw"], image_size=processed_image_size,
                                    val_fraction=val_fraction, split=split, seed=seed).set_display_name("preprocess")
    for task in (ingest, preprocess):
        task.set_caching_options(True)

    # One training per backbone, regime, head, learning rate and seed: every row gets the same tuning budget. A
    # training that fails for good records why instead of failing its task (cxr.training.supervise), so every
    # branch yields a result and the fan-in always runs: a failed iteration would stop the aggregate on KFP 2.17
    # (its driver and Argo compiler have no partial fan-in).
    with dsl.ParallelFor(plan.output, parallelism=settings.PARALLELISM, name="for-each-training") as run:
        train = train_backbone(processed=preprocess.outputs["processed"], backbone=run.backbone, regime=run.regime,
                               head=run.head, learning_rate=run.learning_rate, seed=run.seed,
                               **pipeline_options(locals()), device=device, checkpoint_root=checkpoint_root,
                               run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        train.set_retry(settings.TRAIN_RETRIES, backoff_max_duration=settings.TRAIN_RETRY_WINDOW)
        on_gpu_node(train.set_display_name("train").set_caching_options(False))
        with_kaggle_credentials(train)  # the keras-hub backbones' pretrained weights come from Kaggle Models
        if settings.CHECKPOINT_PVC:
            kubernetes.mount_pvc(train, pvc_name=settings.CHECKPOINT_PVC, mount_path=CHECKPOINT_MOUNT)
        evaluate = evaluate_backbone(processed=preprocess.outputs["processed"], model=train.outputs["model"],
                                     batch_size=batch_size).set_display_name("evaluate")
        explain = explain_backbone(processed=preprocess.outputs["processed"], model=train.outputs["model"],
                                   result=evaluate.outputs["result"], films=explain_films,
                                   source=source).set_display_name("explain")
        on_tensorflow(explain)

    # Fan-in at the root, into a task: a list of artifacts passed into a nested sub-pipeline keeps only one
    # (kubeflow/pipelines#13900). The component sorts what arrives; KFP does not guarantee the order.
    aggregate = aggregate_results(processed=preprocess.outputs["processed"],
                                  results=dsl.Collected(evaluate.outputs["result"]),
                                  explanations=dsl.Collected(explain.outputs["explanation"]),
                                  models=dsl.Collected(train.outputs["model"])).set_display_name("aggregate")
    on_tensorflow(aggregate)
    # Last: the run ends failed when a training is missing, after the report of the others is written.
    verdict(missing=aggregate.outputs["Output"]).set_display_name("verdict")
    return aggregate.outputs["plots"]  # the report folder: report.html, the graphs, the leaderboard


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=YAML)
    args = parser.parse_args()
    try:
        settings.check_environment()
    except UserError as error:
        sys.exit(f"compile: error: {error}")
    compiler.Compiler().compile(chest_xray_benchmark, str(args.output))
    print(f"compiled {args.output} (image {settings.COMPONENT_IMAGE}, parallelism {settings.PARALLELISM}, "
          f"GPU nodes {settings.GPU_NODE_SELECTOR}, checkpoint volume {settings.CHECKPOINT_PVC or 'none'})")


if __name__ == "__main__":
    main()
