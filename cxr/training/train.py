"""Training one backbone, resumable: a checkpoint after every epoch, and a rerun on the same folder goes on
from the last finished epoch with the optimizer, the history and the early-stopping state it had.

On a GPU, mixed precision and XLA switch on by themselves (docs/decisions.md); on the CPU they stay off. Runs on
the Keras backend KERAS_BACKEND names (tensorflow or jax; JAX compiles every step with XLA, on any device).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from cxr import files, provenance, settings
from cxr.data.reader import batches_per_epoch, read_epochs, read_split, split_counts
from cxr.devices import backend, limit_gpu_memory, mixed_precision_policy, select_device
from cxr.errors import UserError
from cxr.outputs import claim, write_atomically
from cxr.serving.trained import write_preprocessing
from cxr.training.backbones import get_backbone, input_size
from cxr.training.features import FeatureCache, FeatureKey, dataset_fingerprint, open_cache, weights_id
from cxr.training.model import build_model
from cxr.training.plan import TrainSettings, fitted_without_learning_rate
from cxr.training.weights import weights_source

HISTORY_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds"]


def class_weights(counts: dict[str, int]) -> dict[int, float]:
    """Weights that make both classes count equally in the loss: n / (2 n_c), about 0.67 and 1.94 for the
    real train split's 3:1 pneumonia."""
    total = sum(counts.values())
    return {label: total / (len(settings.CLASS_NAMES) * counts[name])
            for label, name in enumerate(settings.CLASS_NAMES)}


def format_duration(seconds: float) -> str:
    """H:MM:SS, as the seed reports its learning times (whole seconds; "1 day, H:MM:SS" past a day)."""
    return str(datetime.timedelta(seconds=round(seconds)))


def _save_weights_atomically(model: keras.Model, path: Path) -> None:
    tmp = path.with_name("tmp-" + path.name)  # keeps the .weights.h5 ending Keras requires
    model.save_weights(tmp)
    os.replace(tmp, path)


def _random_states(model: keras.Model) -> list[keras.Variable]:
    """The state of each random generator in `model` (its dropout's): not part of its weights, so a checkpoint
    keeps them apart, and a resumed training draws what the uninterrupted one would have."""
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


class ResumableTraining(keras.callbacks.Callback):
    """Early stopping on val_loss with the best weights restored, and everything needed to resume.

    After each epoch: checkpoint/last.weights.h5 (model and optimizer), checkpoint/best.weights.h5 when val_loss
    improved, then checkpoint/state.json (written last and atomically, so a preemption mid-save leaves the
    previous epoch's consistent state).
    """

    def __init__(self, folder: Path, patience: int, epochs: int, train_images: int):
        super().__init__()
        self.folder, self.patience, self.epochs, self.train_images = folder, patience, epochs, train_images
        self.state_file = folder / "state.json"
        self.state = {"epochs_done": 0, "best_val_loss": math.inf, "best_epoch": 0, "wait": 0,
                      "stopped_epoch": None, "diverged_epoch": None, "history": []}
        if self.state_file.is_file():
            try:
                self.state.update(json.loads(self.state_file.read_text()))
            except (OSError, json.JSONDecodeError):
                raise UserError(f"{self.state_file} is damaged; start again with a new --checkpoint "
                                "(or a new --out)") from None

    @property
    def finished(self) -> bool:
        state = self.state
        return (state["stopped_epoch"] is not None or state["diverged_epoch"] is not None
                or state["epochs_done"] >= self.epochs)

    def restore(self, model: keras.Model) -> None:
        """Load the last epoch's model and optimizer state (into the built optimizer), when there is one, and where
        the random draws of its layers (dropout) had got to."""
        if self.state["epochs_done"]:
            model.load_weights(self.folder / "last.weights.h5")
            # Checkpoints written before the states were kept resume with fresh ones.
            for variable, value in zip(_random_states(model), self.state.get("random_states", []), strict=False):
                variable.assign(value)

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        seconds = time.monotonic() - self._started
        row = {"epoch": epoch + 1, **{k: float(logs[k]) for k in HISTORY_COLUMNS[1:5]}, "seconds": seconds}
        state = self.state
        if not (math.isfinite(row["loss"]) and math.isfinite(row["val_loss"])):
            # Diverged: this epoch's weights are NaN. Keep the last finished epoch's checkpoint as it is, so
            # the best epoch so far survives, and stop.
            state["diverged_epoch"] = epoch + 1
            self.model.stop_training = True
            write_atomically(self.state_file, json.dumps(state, indent=1))
            print(f"epoch {epoch + 1}/{self.epochs}: loss {row['loss']} val_loss {row['val_loss']}: diverged, "
                  "stopping", flush=True)
            return
        state["history"].append(row)
        state["epochs_done"] = epoch + 1
        if row["val_loss"] < state["best_val_loss"]:
            state.update(best_val_loss=row["val_loss"], best_epoch=epoch + 1, wait=0)
            _save_weights_atomically(self.model, self.folder / "best.weights.h5")
        else:
            state["wait"] += 1
            if state["wait"] >= self.patience:
                state["stopped_epoch"] = epoch + 1
                self.model.stop_training = True
        _save_weights_atomically(self.model, self.folder / "last.weights.h5")
        state["random_states"] = [keras.ops.convert_to_numpy(v).tolist() for v in _random_states(self.model)]
        write_atomically(self.state_file, json.dumps(state, indent=1))
        print(f"epoch {epoch + 1}/{self.epochs}: loss {row['loss']:.4f} acc {row['accuracy']:.4f} | "
              f"val_loss {row['val_loss']:.4f} val_acc {row['val_accuracy']:.4f} | {seconds:.1f} s, "
              f"{self.train_images / seconds:,.0f} img/s"
              + (f" | early stop, best epoch {state['best_epoch']}" if state["stopped_epoch"] else ""),
              flush=True)


def train(data_dir: Path, out: Path, options: TrainSettings, checkpoint: Path | None = None,
          device: str = "auto", features: Path | None = None) -> dict:
    """Train `options.backbone` on data_dir's train split, validating on val; write model.keras, history.csv
    and train_metrics.json into `out` and return the metrics.

    Checkpoints go to `checkpoint` (default out/checkpoint); a rerun with the same checkpoint resumes from there,
    into the same `out` or a new one (what a retried pipeline task does: a new pod, a new output path, the same
    checkpoint volume). A rerun on a finished `out` reuses it. `device`: auto, gpu (refuse to start without
    one) or cpu (cxr.devices). The frozen regime keeps its features in `features` (default: a `features` folder
    beside the checkpoint folder), where other seeds and reruns find them.
    """
    data_dir, out = Path(data_dir), Path(out)
    options.validate()
    if backend() not in settings.KERAS_BACKENDS:
        raise UserError(f"KERAS_BACKEND={backend()}: training supports {' or '.join(settings.KERAS_BACKENDS)}")
    backbone = get_backbone(options.backbone)
    options = dataclasses.replace(options, backbone=backbone.name)
    size = input_size(backbone, options.image_size)
    # A weights file, folder or gs:// prefix that lacks this backbone's weights, or holds them damaged, is refused
    # before any folder is made, with the same message in both regimes.
    weights_source(options.weights, backbone.name, size)
    print(f"train: {limit_gpu_memory()}", file=sys.stderr)  # before the backend touches a GPU
    device_used = select_device(device)  # before any file is written: a pod without its GPU stops here
    data = provenance.data_record(data_dir)  # before the claim: a wrong --data leaves --out free for the right one
    wanted = dataclasses.asdict(options)
    with claim(out, "train", wanted) as output:
        if output.finished and (out / files.MODEL).is_file() and (out / files.TRAIN_METRICS).is_file():
            print(f"train: {out} already holds this finished training; reusing it", file=sys.stderr)
            return json.loads((out / files.TRAIN_METRICS).read_text())
        counts = split_counts(data_dir)
        checkpoint = Path(checkpoint) if checkpoint else out / files.CHECKPOINT_DIR
        features = Path(features) if features else checkpoint.parent / settings.FEATURES_DIR
        with claim(checkpoint, "train", wanted, option="--checkpoint"):
            run = Run(data_dir, checkpoint, options, size, counts, device_used, features)
            model, metrics, predictions = _fit(run)
        metrics["provenance"] = {"data": data}  # what later steps check this training against
        model.save(out / files.MODEL)
        write_preprocessing(out, data_dir, size)  # what `cxr predict` and `cxr export` must repeat on new films
        if predictions is not None:
            predictions.to_csv(out / files.HEAD_PREDICTIONS, index=False)
        pd.DataFrame(metrics.pop("history"), columns=HISTORY_COLUMNS).to_csv(out / files.HISTORY, index=False)
        write_atomically(out / files.TRAIN_METRICS, json.dumps(metrics, indent=2))
        output.finish()
    return metrics


@dataclasses.dataclass(frozen=True)
class Run:
    """One training's inputs, as train() resolved them."""

    data_dir: Path
    checkpoint: Path
    options: TrainSettings
    size: int  # the input size used
    counts: dict[str, dict[str, int]]  # films per split and class
    device: str  # "CPU" or a GPU's name
    features: Path  # the frozen regime's feature cache root


@dataclasses.dataclass
class Data:
    """What the model that learns is fed, and what the frozen regime adds."""

    trainee: keras.Model  # the whole classifier (finetune) or its head alone (frozen)
    train: object  # a tf.data.Dataset or a keras.utils.PyDataset
    val: object
    steps_per_epoch: int | None = None  # for an endless stream of epochs; None: one pass of `train` is an epoch
    callbacks: list[keras.callbacks.Callback] = dataclasses.field(default_factory=list)
    cache: FeatureCache | None = None


def _finetune_data(run: Run, first_epoch: int) -> Data:
    """The whole classifier, fed the train split's epochs from `first_epoch` on (the orders an uninterrupted
    training reads)."""
    options = run.options
    model = build_model(get_backbone(options.backbone), run.size, dense_units=options.dense_units,
                        dropout=options.dropout, weights=options.weights, head=options.head)
    read = dict(data_dir=run.data_dir, image_size=run.size, batch_size=options.batch_size)
    return Data(model, read_epochs(split="train", seed=options.seed, first_epoch=first_epoch, **read),
                read_split(split="val", **read),
                steps_per_epoch=batches_per_epoch(run.data_dir, "train", options.batch_size))


def _frozen_cache(run: Run, xla: bool) -> tuple[FeatureCache, keras.Model | None]:
    """The feature cache of the run's backbone (built when missing), and the classifier that computed it when this
    process did (with the seed's head: the backbone is what counts)."""
    from cxr.training import frozen

    options = run.options
    key = FeatureKey(options.backbone, run.size, weights_id(options.weights, options.backbone, run.size),
                     keras.mixed_precision.global_policy().compute_dtype, dataset_fingerprint(run.data_dir))
    built: list[keras.Model] = []

    def extract(folder: Path) -> None:
        built.append(build_model(get_backbone(options.backbone), run.size, dense_units=options.dense_units,
                                 dropout=options.dropout, weights=options.weights, train_backbone=False))
        batch = settings.FEATURE_BATCH_SIZE_GPU if run.device != "CPU" else options.batch_size
        frozen.extract_features(built[0], run.data_dir, run.size, batch, folder, jit_compile=xla)

    cache = open_cache(run.features, key, extract)
    return cache, (built[0] if built else None)


def _frozen_model(run: Run, cache: FeatureCache, **head) -> keras.Model:
    """The classifier with `head` (build_model's head arguments) on the backbone that computed `cache`: nothing to
    download, and the features are exactly its."""
    from cxr.training import frozen

    options = run.options
    model = build_model(get_backbone(options.backbone), run.size, dense_units=options.dense_units,
                        dropout=options.dropout, weights="none", train_backbone=False, **head)
    frozen.load_backbone(model, cache)
    return model


def _frozen_data(run: Run, xla: bool) -> tuple[keras.Model, Data]:
    """The classifier with a frozen backbone, and its head fed from the feature cache (built when missing)."""
    from cxr.training import frozen

    options = run.options
    cache, built = _frozen_cache(run, xla)
    model = built if built is not None else _frozen_model(run, cache)
    head = frozen.head_model(model, cache.features("train"))
    train_films, val_films = cache.films("train"), cache.films("val")
    batches = frozen.FeatureBatches(cache.features("train"), train_films["label"].to_numpy(), options.batch_size,
                                    seed=options.seed)
    data = Data(head, batches,
                frozen.FeatureBatches(cache.features("val"), val_films["label"].to_numpy(), options.batch_size),
                callbacks=[frozen.EpochOrder(batches)], cache=cache)
    return model, data


def _fit_probe(run: Run, xla: bool) -> tuple[keras.Model, dict, FeatureCache, pd.DataFrame, dict]:
    """A probe fitted by scikit-learn on the cache's pooled features (cxr.training.probes) and set into the
    classifier's last layer. Its one "epoch" in the history: train and validation log loss and accuracy at 0.5."""
    from sklearn.metrics import accuracy_score, log_loss

    from cxr.training import frozen
    from cxr.training.heads import pool
    from cxr.training.probes import FITTERS

    options = run.options
    cache, _ = _frozen_cache(run, xla)
    pooled = {split: pool(cache.features(split)) for split in ("train", "val")}
    labels = {split: cache.films(split)["label"].to_numpy() for split in ("train", "val")}
    probe = FITTERS[options.head](pooled["train"], labels["train"], pooled["val"], labels["val"])
    model = _frozen_model(run, cache, head=options.head, references=len(labels["train"]),
                          neighbours=int(probe.value))
    model.get_layer("pneumonia").set_weights(probe.weights)
    head = frozen.head_model(model, cache.features("train"), options.head)
    scored = frozen.head_predictions(head, cache, options.batch_size, splits=settings.SPLITS)
    row = {"epoch": 1, "seconds": probe.seconds}
    for prefix, split in (("", "train"), ("val_", "val")):
        table = scored[scored["split"] == split]
        probabilities = table["probability"].to_numpy()
        row[f"{prefix}loss"] = float(log_loss(table["label"], np.clip(probabilities, 1e-7, 1 - 1e-7),
                                              labels=[0, 1])) if len(table) else 0.0
        row[f"{prefix}accuracy"] = float(accuracy_score(table["label"], probabilities >= 0.5)) if len(table) else 0.0
    predictions = scored[scored["split"] != "train"].reset_index(drop=True)
    print(f"train: {options.head} probe on {options.backbone}: {probe.parameter} = {probe.value:g} "
          f"(validation ROC AUC {max(probe.val_roc_auc.values()):.4f}), fitted in {probe.seconds:.1f} s", flush=True)
    state = {"history": [row], "best_epoch": 1, "epochs_done": 1, "stopped_epoch": None, "diverged_epoch": None,
             "feature_seconds": 0.0 if cache.reused else cache.seconds}
    return model, state, cache, predictions, probe.record()


def _fit_trainee(run: Run, xla: bool) -> tuple[keras.Model, dict, FeatureCache | None, pd.DataFrame | None]:
    """Train (or resume) with Adam in the checkpoint folder: the whole classifier (finetune) or the seed's head on
    the cached features (frozen). The model at its best epoch, the training state with its history, the cache and
    (frozen) the head's validation and test predictions."""
    options, name = run.options, run.options.backbone
    train_images = sum(run.counts["train"].values())
    tracker = ResumableTraining(run.checkpoint, options.patience, options.epochs, train_images)
    if options.regime == "frozen":
        model, data = _frozen_data(run, xla)
    else:
        data = _finetune_data(run, first_epoch=tracker.state["epochs_done"])
        model = data.trainee
    trainee = data.trainee
    trainee.compile(optimizer=keras.optimizers.Adam(options.learning_rate), loss="binary_crossentropy",
                    metrics=[keras.metrics.BinaryAccuracy(name="accuracy")], jit_compile=xla)
    # Built before fit: left to fit, TensorFlow's Keras builds it inside the first trace of the training step, and
    # the variables made there make TensorFlow trace the whole step a second time (docs/performance.md).
    trainee.optimizer.build(trainee.trainable_variables)
    tracker.restore(trainee)
    if tracker.state["epochs_done"]:
        print(f"train: resuming {name} after epoch {tracker.state['epochs_done']}", file=sys.stderr)
    if data.cache is not None and not data.cache.reused:
        # Kept with the checkpoint: a training resumed after its extraction still reports what that cost.
        tracker.state["feature_seconds"] = data.cache.seconds

    if not tracker.finished:
        trainee.fit(data.train, validation_data=data.val, epochs=options.epochs,
                    initial_epoch=tracker.state["epochs_done"], steps_per_epoch=data.steps_per_epoch,
                    class_weight=class_weights(run.counts["train"]), callbacks=[*data.callbacks, tracker],
                    shuffle=False, verbose=1 if sys.stdout.isatty() else 2)

    state = tracker.state
    if state["diverged_epoch"] is not None:
        if not state["best_epoch"]:
            raise UserError(f"training {name} diverged: the loss became NaN or infinite in epoch "
                            f"{state['diverged_epoch']}, "
                            f"before any epoch finished; lower --lr (now {options.learning_rate:g})")
        print(f"train: {name} diverged in epoch {state['diverged_epoch']}; keeping its best epoch, "
              f"{state['best_epoch']}", file=sys.stderr)
    trainee.load_weights(run.checkpoint / "best.weights.h5")  # frozen: the head's layers are the model's
    predictions = None
    if data.cache is not None:
        from cxr.training.frozen import head_predictions

        predictions = head_predictions(trainee, data.cache, options.batch_size)
    return model, state, data.cache, predictions


def _fit(run: Run) -> tuple[keras.Model, dict, pd.DataFrame | None]:
    """Train: the seed's head with Adam (_fit_trainee) or a probe fitted by scikit-learn (_fit_probe); return the
    model, the metrics with the history, and (frozen regime) the head's validation and test predictions."""
    options, name = run.options, run.options.backbone
    on_gpu = run.device != "CPU"
    mixed = on_gpu if options.mixed_precision is None else options.mixed_precision
    # JAX compiles every step with XLA; Keras' uncompiled JAX path is a debugging mode, many times slower.
    xla = backend() == "jax" or (on_gpu if options.xla is None else options.xla)
    keras.mixed_precision.set_global_policy(mixed_precision_policy() if mixed else "float32")
    keras.utils.set_random_seed(options.seed)

    probe = None
    if fitted_without_learning_rate(options.regime, options.head):
        model, state, cache, predictions, probe = _fit_probe(run, xla)
    else:  # the seed's head, or a linear head trained end to end with the backbone (MedMNIST+'s protocol)
        model, state, cache, predictions = _fit_trainee(run, xla)
    train_images = sum(run.counts["train"].values())
    history = pd.DataFrame(state["history"], columns=HISTORY_COLUMNS)
    best = history[history["epoch"] == state["best_epoch"]].iloc[0]
    last = history.iloc[-1]
    seconds = float(history["seconds"].sum())
    return model, {
        "backbone": name,
        "regime": options.regime,
        "head": options.head,
        "image_size": run.size,
        "train_images": train_images,
        "val_images": sum(run.counts["val"].values()),
        "final": {k: float(last[k]) for k in HISTORY_COLUMNS[1:5]},
        "best": {k: float(best[k]) for k in HISTORY_COLUMNS[1:5]},
        "best_epoch": int(state["best_epoch"]),
        "epochs_run": int(state["epochs_done"]),
        "stopped_epoch": state["stopped_epoch"],
        "diverged_epoch": state["diverged_epoch"],
        "learning_time_seconds": seconds,
        "learning_time": format_duration(seconds),
        # The frozen regime's one pass of the backbone over every film; 0 when the cache was reused. The report
        # adds it to the learning time.
        "feature_seconds": float(state.get("feature_seconds", 0.0)),
        "features": ({"folder": str(cache.folder), "reused": cache.reused,
                      "key": dataclasses.asdict(cache.key)} if cache is not None else None),
        # The probe's chosen hyperparameter and the validation ROC AUC of every one tried; None for Adam's heads.
        "probe": probe,
        "images_per_second": train_images * len(history) / seconds if seconds else 0.0,
        "device": run.device,
        "backend": backend(),
        "mixed_precision": mixed,
        "xla": xla,
        "settings": dataclasses.asdict(options),
        "history": state["history"],
    }, predictions
