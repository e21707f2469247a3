"""The tf.data reader that training and evaluation use: one split of the TFRecords at a requested size,
batched, cached and prefetched, as uint8 grayscale films.

Decoding PNGs and resizing happen once: the films are cached in memory after the first epoch (a 299-px train
split is about 0.5 GB). The backbone's own preprocessing is the model's first layer (cxr.training.backbones), on the
accelerator, so each epoch after the first costs the host a shuffle and a batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import tensorflow as tf

from cxr import artifacts, files
from cxr.errors import UserError

_SHUFFLE_BUFFER = 4096  # films: most of the real train split's 5,216, in about 0.4 GB at 299 px
_EPOCHS_PER_SEED = 1 << 20  # far more epochs than any training runs; keeps (seed, epoch) -> shuffle seed one-to-one

_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "patient_id": tf.io.FixedLenFeature([], tf.string),
    "source": tf.io.FixedLenFeature([], tf.string),
}


def shard_files(data_dir: Path, split: str) -> list[str]:
    shards = sorted(str(p) for p in Path(data_dir).glob(f"{split}-*-of-*.tfrecord"))
    if not shards:
        raise UserError(f"no {split}-*.tfrecord in {data_dir} (run `cxr preprocess` first)")
    return shards


def split_counts(data_dir: Path) -> dict[str, dict[str, int]]:
    """Images per split and class, from the preprocessing stats."""
    return artifacts.read_stats(Path(data_dir) / files.STATS)["counts"]


def resize_film(image: tf.Tensor, size: int) -> tf.Tensor:
    """A uint8 film [height, width, 1] (or a batch of them) as uint8 at size x size: what the model sees.

    Training, evaluation, `cxr predict` and the exported SavedModel all call this, so they see the same pixels.
    """
    # Antialiased: a 299-px film read at 224 px keeps its fine texture without aliasing.
    image = tf.image.resize(image, (size, size), method="bilinear", antialias=True)
    return tf.cast(tf.round(image), tf.uint8)


def decode_film(png: tf.Tensor, size: int) -> tf.Tensor:
    """A stored film (the PNG bytes `cxr preprocess` writes) as uint8 [size, size, 1]."""
    return resize_film(tf.io.decode_png(png, channels=1), size)


def _decode(size: int) -> Callable:
    def decode(record: tf.Tensor) -> dict[str, tf.Tensor]:
        example = tf.io.parse_single_example(record, _FEATURES)
        return {"image": decode_film(example["image"], size), "label": example["label"],
                "patient_id": example["patient_id"], "source": example["source"]}

    return decode


def _films(data_dir: Path, split: str, image_size: int) -> tf.data.Dataset:
    """Every film of `split` as a dict (image, label, patient_id, source), in shard order, cached in memory once
    read."""
    images = sum(split_counts(data_dir)[split].values())
    # A known length gives Keras a full progress bar from the first epoch.
    records = tf.data.TFRecordDataset(shard_files(data_dir, split)).apply(
        tf.data.experimental.assert_cardinality(images))
    return records.map(_decode(image_size), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).cache()


def _model_input(batches: tf.data.Dataset, with_metadata: bool) -> tf.data.Dataset:
    def to_model_input(batch: dict[str, tf.Tensor]):
        labels = tf.cast(batch["label"], tf.float32)
        if with_metadata:
            return {**batch, "label": labels}
        return batch["image"], labels

    return (batches.map(to_model_input, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
            .with_options(_without_autotuning()))


def _without_autotuning() -> tf.data.Options:
    """tf.data's autotuning off. Its optimisation thread sleeps up to 60 s between rounds, and when an iterator is
    destroyed on a busy CPU the thread can miss its wake-up (TensorFlow marks the iterator cancelled only after
    waking it), so the destruction waits for the rest of the sleep: `fit` returned up to a minute after its last
    epoch (docs/performance.md). Parallel maps keep AUTOTUNE's starting parallelism (the cores, up to 16), and a
    prefetch buffer still sizes itself."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


def read_split(data_dir: Path, split: str, image_size: int, batch_size: int,
               with_metadata: bool = False) -> tf.data.Dataset:
    """Batches of (films, labels) for one split, in the order of the shards (the same on every call), or of dicts
    with `patient_id` and `source` too.

    films: uint8 [batch, image_size, image_size, 1]; labels: float32 [batch], PNEUMONIA = 1.
    """
    return _model_input(_films(data_dir, split, image_size).batch(batch_size), with_metadata)


def batches_per_epoch(data_dir: Path, split: str, batch_size: int) -> int:
    return math.ceil(sum(split_counts(data_dir)[split].values()) / batch_size)


def read_epochs(data_dir: Path, split: str, image_size: int, batch_size: int, seed: int, first_epoch: int = 0,
                with_metadata: bool = False) -> tf.data.Dataset:
    """Training batches: an endless stream of epochs of `split` from `first_epoch` on, each epoch every film once,
    in an order that is a function of `seed` and the epoch alone. A training resumed at epoch k so reads what the
    uninterrupted one read from epoch k on (a dataset reshuffled at each iteration would start over at the first
    epoch's order). Read it with steps_per_epoch = batches_per_epoch(...)."""
    films = _films(data_dir, split, image_size)

    def epoch(number: tf.Tensor) -> tf.data.Dataset:
        # Batched inside the epoch: no batch mixes two epochs' films.
        return films.shuffle(_SHUFFLE_BUFFER, seed=seed * _EPOCHS_PER_SEED + number).batch(batch_size)

    return _model_input(tf.data.Dataset.range(first_epoch, _EPOCHS_PER_SEED).flat_map(epoch), with_metadata)
