"""The probes' Keras layers: the pooling of a backbone's output into one vector per film, and the kNN probe that
carries its reference features. With them a probe's saved model.keras takes raw films end to end, as the seed's
head's does, and every later step (evaluate, explain, predict, export, serve) loads it the same way."""

from __future__ import annotations

import keras
import numpy as np

# Films pooled per chunk of a memory-mapped cache: a few hundred MB at most for ResNet50's 7x7x2048 map.
_POOL_CHUNK = 256


@keras.saving.register_keras_serializable(package="cxr")
class FeaturePooling(keras.layers.Layer):
    """A backbone's output -> one vector per film: a CNN's map (N, H, W, C) by global average pooling; a vision
    transformer's tokens (N, T, D) as the class token concatenated with the mean of the patch tokens 1..T-1
    (N, 2D), the DINOv2 paper's linear evaluation (Oquab et al. 2023)."""

    def call(self, features):
        if len(features.shape) == 4:
            return keras.ops.mean(features, axis=(1, 2))
        if len(features.shape) == 3:
            return keras.ops.concatenate([features[:, 0], keras.ops.mean(features[:, 1:], axis=1)], axis=-1)
        raise ValueError(f"FeaturePooling takes (N, H, W, C) maps or (N, T, D) tokens, got shape {features.shape}")

    def compute_output_shape(self, input_shape):
        if len(input_shape) == 3:
            return (input_shape[0], 2 * input_shape[-1])
        return (input_shape[0], input_shape[-1])


def pool(features: np.ndarray) -> np.ndarray:
    """FeaturePooling in numpy, float32, read in chunks so that a memory-mapped cache is never loaded whole."""
    chunks = [np.asarray(FeaturePooling()(np.asarray(features[start:start + _POOL_CHUNK], dtype="float32")))
              for start in range(0, len(features), _POOL_CHUNK)]
    if not chunks:
        width = features.shape[-1] * (2 if features.ndim == 3 else 1)
        return np.zeros((0, width), dtype="float32")
    return np.concatenate(chunks).astype("float32")


def normalize(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero): cosine similarity becomes a dot product."""
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.where(norms > 0, norms, 1)


@keras.saving.register_keras_serializable(package="cxr")
class NearestNeighbours(keras.layers.Layer):
    """P(pneumonia) = the share of pneumonia among a film's `neighbours` nearest reference films by cosine
    similarity. The reference features (L2-normalised, float32) and their labels are the layer's weights, set from
    the train split's pooled features: the saved model carries them (references x features x 4 bytes)."""

    def __init__(self, references: int, neighbours: int, **kwargs):
        super().__init__(**kwargs)
        self.references, self.neighbours = references, neighbours

    def build(self, input_shape):
        self.reference_features = self.add_weight(shape=(self.references, input_shape[-1]), initializer="zeros",
                                                  trainable=False, name="reference_features")
        self.reference_labels = self.add_weight(shape=(self.references,), initializer="zeros", trainable=False,
                                                name="reference_labels")

    def _nearest(self, features):
        """The cosine similarity of each film to its nearest references, and their labels: (N, k) each."""
        features = keras.ops.cast(features, "float32")
        norms = keras.ops.sqrt(keras.ops.sum(keras.ops.square(features), axis=-1, keepdims=True))
        unit = features / keras.ops.where(norms > 0, norms, keras.ops.ones_like(norms))
        similarity = keras.ops.matmul(unit, keras.ops.transpose(self.reference_features))
        nearest, indices = keras.ops.top_k(similarity, self.neighbours)
        return nearest, keras.ops.take(self.reference_labels, indices)

    def call(self, features):
        _, votes = self._nearest(features)
        return keras.ops.mean(votes, axis=-1, keepdims=True)

    def evidence(self, features):
        """What Grad-CAM differentiates in place of a logit, (N, 1): the vote is a step function of the features
        with no gradient, so the mean similarity to the pneumonia neighbours minus that to the normal ones, among
        the same k neighbours, stands for it (it grows where the film looks more like its pneumonia neighbours)."""
        similarity, votes = self._nearest(features)
        return keras.ops.mean(similarity * (2 * votes - 1), axis=-1, keepdims=True)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1)

    def get_config(self) -> dict:
        return {**super().get_config(), "references": self.references, "neighbours": self.neighbours}
