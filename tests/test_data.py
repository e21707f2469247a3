import numpy as np
import pandas as pd
import tensorflow as tf

from cxr.data.reader import read_split


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


def test_shuffled_reads_cover_the_split_once_per_epoch_in_a_new_order(processed_dataset):
    dataset = read_split(processed_dataset, "train", 32, 64, shuffle=True, seed=1, with_metadata=True)
    epochs = [[s.decode() for b in dataset for s in b["source"].numpy()] for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) and len(set(epochs[0])) == len(epochs[0])
    assert epochs[0] != epochs[1]
