import numpy as np
import pandas as pd
import tensorflow as tf

from cxr.data.reader import batches_per_epoch, read_epochs, read_split


def test_reader_yields_uint8_films_of_the_requested_size(processed_dataset):
    films, labels = next(iter(read_split(processed_dataset, "train", 48, 8)))
    assert films.shape == (8, 48, 48, 1) and films.dtype == tf.uint8
    assert labels.shape == (8,) and labels.dtype == tf.float32
    assert int(tf.reduce_max(films)) > 100  # real pixels, not an empty resize


def test_reader_labels_and_patients_match_the_manifest_in_order(processed_dataset):
    manifest = pd.read_csv(processed_dataset / "manifest.csv")
    expected = manifest[manifest["split"] == "test"]
    rows = list(read_split(processed_dataset, "test", 32, 5, with_metadata=True))
    labels = np.concatenate([b["label"].numpy() for b in rows])
    patients = [p.decode() for b in rows for p in b["patient_id"].numpy()]
    sources = [s.decode() for b in rows for s in b["source"].numpy()]
    assert sources == list(expected["source"])
    assert patients == list(expected["patient_id"])
    assert labels.tolist() == expected["label"].astype(float).tolist()


def test_each_epoch_covers_the_split_once_in_an_order_of_its_own_that_a_resumed_stream_repeats(processed_dataset):
    batches = batches_per_epoch(processed_dataset, "train", 8)

    def epochs(first: int, count: int) -> list[list[str]]:
        stream = iter(read_epochs(processed_dataset, "train", 32, 8, seed=1, first_epoch=first, with_metadata=True))
        return [[s.decode() for _ in range(batches) for s in next(stream)["source"].numpy()] for _ in range(count)]

    first, second, third = epochs(0, 3)
    assert sorted(first) == sorted(second) == sorted(third) and len(set(first)) == len(first)
    assert first != second != third
    # A training resumed after two epochs reads the third epoch's order, not the first's.
    assert epochs(2, 1) == [third]
    assert epochs(0, 1) == [first]  # the same seed, the same orders




def test_the_streams_read_without_tf_data_autotuning(processed_dataset):
    """Autotuning's thread can hold an iterator's destruction for up to a minute on a busy CPU (a race inside
    tf.data, shown by benchmarks/iterator_end.py); the reader's streams run without it."""
    for stream in (read_epochs(processed_dataset, "train", 32, 8, seed=1), read_split(processed_dataset, "val", 32, 8)):
        assert stream.options().autotune.enabled is False
