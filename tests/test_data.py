import numpy as np
import pandas as pd
import tensorflow as tf

from cxr.backbones import get_backbone
from cxr.data import read_split


def test_reader_yields_batches_of_the_requested_size_for_a_backbone(processed_dataset):
    backbone = get_backbone("resnet50")
    images, labels = next(iter(read_split(processed_dataset, "train", 48, backbone.preprocess_input, 8)))
    assert images.shape == (8, 48, 48, 3) and images.dtype == tf.float32
    assert labels.shape == (8,) and labels.dtype == tf.float32
    # caffe-style preprocessing: BGR with ImageNet means subtracted, so values go negative
    assert float(tf.reduce_min(images)) < 0


def test_reader_labels_and_patients_match_the_manifest_in_order(processed_dataset):
    backbone = get_backbone("mobilenet")
    manifest = pd.read_csv(processed_dataset / "manifest.csv")
    expected = manifest[manifest["split"] == "test"]
    rows = [batch for batch in read_split(processed_dataset, "test", 32, backbone.preprocess_input, 5,
                                          with_metadata=True)]
    labels = np.concatenate([b["label"].numpy() for b in rows])
    patients = [p.decode() for b in rows for p in b["patient_id"].numpy()]
    sources = [s.decode() for b in rows for s in b["source"].numpy()]
    assert sources == list(expected["source"])
    assert patients == list(expected["patient_id"])
    assert labels.tolist() == expected["label"].astype(float).tolist()
    images = np.concatenate([b["image"].numpy() for b in rows])
    assert images.min() >= -1 and images.max() <= 1  # MobileNet scales to [-1, 1]
