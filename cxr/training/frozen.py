"""The frozen regime with Keras: the backbone computes every film's features once (cxr.training.features keeps
them), then the seed's head alone trains on them.

The head is made of the classifier's own layers (Flatten, Dense, Dropout, Dense), applied to an input of the
backbone's output shape: training it trains the whole classifier's head, so the saved model.keras is the whole
classifier (backbone + head) and every later step uses it as it uses a fine-tuned one.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from cxr import settings
from cxr.training.features import BACKBONE_WEIGHTS, FILM_COLUMNS, FeatureCache, features_file, films_file
from cxr.training.model import HEAD_LAYERS, backbone_of, feature_extractor

PREDICTION_COLUMNS = ["split", *FILM_COLUMNS, "probability"]


def _out_of_memory(error: Exception) -> bool:
    """TensorFlow's ResourceExhaustedError, or XLA's RESOURCE_EXHAUSTED on JAX."""
    return type(error).__name__ == "ResourceExhaustedError" or "RESOURCE_EXHAUSTED" in str(error)


def _extract_split(extractor: keras.Model, data_dir: Path, split: str, size: int, batch_size: int,
                   folder: Path) -> None:
    from cxr.data.reader import read_split, split_counts

    films = sum(split_counts(data_dir)[split].values())
    shape = tuple(int(d) for d in extractor.output.shape[1:])
    # As the backbone computes them: float16 under mixed_float16 (half the disk), else float32; bfloat16 (JAX's
    # mixed precision) has no numpy type of its own and widens to float32 without loss.
    computed = keras.backend.standardize_dtype(extractor.output.dtype)
    dtype = np.dtype("float16" if computed == "float16" else "float32")
    features = np.lib.format.open_memmap(folder / features_file(split), mode="w+", dtype=dtype, shape=(films, *shape))
    rows, done = [], 0
    for batch in read_split(data_dir, split, size, batch_size, with_metadata=True):
        values = np.asarray(extractor.predict_on_batch(batch["image"].numpy()))
        features[done:done + len(values)] = values
        done += len(values)
        rows.append(pd.DataFrame({"patient_id": [v.decode() for v in batch["patient_id"].numpy()],
                                  "source": [v.decode() for v in batch["source"].numpy()],
                                  "label": batch["label"].numpy().astype(int)}))
    if done != films:
        raise RuntimeError(f"{split}: read {done} films, stats.json counts {films}")
    features.flush()
    del features
    pd.concat(rows, ignore_index=True)[FILM_COLUMNS].to_csv(folder / films_file(split), index=False)


def extract_features(model: keras.Model, data_dir: Path, size: int, batch_size: int, folder: Path,
                     jit_compile: bool = False) -> None:
    """Write the features of every split's films (the backbone's output, in inference mode) and the backbone's
    weights into `folder`. An out-of-memory error halves the batch and starts the split again, so a GPU runs
    batches as large as its memory allows."""
    extractor = feature_extractor(model)
    extractor.compile(jit_compile=jit_compile)
    for split in settings.SPLITS:
        while True:
            try:
                _extract_split(extractor, data_dir, split, size, batch_size, folder)
                break
            except Exception as error:
                if batch_size == 1 or not _out_of_memory(error):
                    raise
                batch_size //= 2
                print(f"train: out of memory extracting features; batches of {batch_size} films", file=sys.stderr)
    backbone_of(model).save_weights(folder / BACKBONE_WEIGHTS)


def load_backbone(model: keras.Model, cache: FeatureCache) -> None:
    """Put the backbone that computed the cache into `model`, so the saved classifier is the one the head was
    trained for (with weights none, a random backbone only the cache knows)."""
    backbone_of(model).load_weights(cache.backbone_weights)


def head_model(model: keras.Model, features: np.ndarray, head: str = settings.DEFAULT_HEAD) -> keras.Model:
    """The classifier's head on an input of the cached features' shape: its layers, shared, not copies."""
    inputs = keras.Input(features.shape[1:], dtype=str(features.dtype), name="features")
    x = inputs
    for name in HEAD_LAYERS[head]:
        x = model.get_layer(name)(x)
    return keras.Model(inputs, x, name=f"{model.name}_head")


class FeatureBatches(keras.utils.PyDataset):
    """(features, labels) batches from a memory-mapped cache (numpy arrays: every Keras backend reads them).

    With a `seed`, each epoch has its own order, a function of the seed and the epoch alone, so a training resumed
    at epoch k sees the batches the uninterrupted one saw; EpochOrder tells it which epoch is starting.
    """

    def __init__(self, features: np.ndarray, labels: np.ndarray, batch_size: int, seed: int | None = None):
        super().__init__()
        self.features, self.labels, self.batch_size, self.seed = features, labels.astype("float32"), batch_size, seed
        self.start_epoch(0)

    def start_epoch(self, epoch: int) -> None:
        count = len(self.labels)
        self.order = (np.random.default_rng([self.seed, epoch]).permutation(count) if self.seed is not None
                      else np.arange(count))

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        # Sorted within the batch: reads from the memmap go forward; the batch's loss is the same.
        chosen = np.sort(self.order[index * self.batch_size:(index + 1) * self.batch_size])
        return np.asarray(self.features[chosen]), self.labels[chosen]


class EpochOrder(keras.callbacks.Callback):
    """Sets the epoch of `batches` as Keras begins it (before the epoch's first batch is read): Keras counts
    epochs from fit's initial_epoch, so a resumed training continues the same sequence of orders."""

    def __init__(self, batches: FeatureBatches):
        super().__init__()
        self.batches = batches

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.batches.start_epoch(epoch)


def head_predictions(head: keras.Model, cache: FeatureCache, batch_size: int,
                     splits: tuple[str, ...] = ("val", "test")) -> pd.DataFrame:
    """P(pneumonia) of the head for every film of the cache's `splits`: for validation and test, what `cxr
    evaluate` reports for a frozen model, without a second pass through the backbone."""
    tables = []
    for split in splits:
        films = cache.films(split)
        batches = FeatureBatches(cache.features(split), films["label"].to_numpy(), batch_size)
        probabilities = np.concatenate([np.asarray(head.predict_on_batch(batches[i][0])).reshape(-1)
                                        for i in range(len(batches))]) if len(films) else np.zeros(0)
        tables.append(films.assign(split=split, probability=probabilities.astype(float)))
    return pd.concat(tables, ignore_index=True)[PREDICTION_COLUMNS]

