"""The classifier: preprocessing -> backbone -> a head. The seed's head is Flatten -> Dense(16, relu) ->
Dropout(0.5) -> Dense(1, sigmoid); the probes' are pooling -> Dense(1, sigmoid) (linear) or pooling -> cosine
k-nearest neighbours (knn), their weights fitted by scikit-learn (cxr.training.probes). A keras-hub backbone's
output is a token sequence (cxr.training.hub), which Flatten flattens as it does a CNN's map."""

from __future__ import annotations

import warnings
from pathlib import Path

import keras

from cxr import settings
from cxr.errors import UserError
from cxr.training.backbones import Backbone, BackbonePreprocessing
from cxr.training.heads import FeaturePooling, NearestNeighbours
from cxr.training.weights import resolve as resolve_weights

# Each head's layers, by name, in order: what the frozen regime applies to cached features.
HEAD_LAYERS = {"seed": ("flatten", "dense", "dropout", "pneumonia"), "linear": ("pooling", "pneumonia"),
               "knn": ("pooling", "pneumonia")}


def backbone_of(model: keras.Model) -> keras.Model:
    """The keras.applications backbone inside a classifier build_model made: its one nested Model."""
    (backbone,) = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    return backbone


def feature_extractor(model: keras.Model) -> keras.Model:
    """The classifier's own layers up to its backbone's output, in inference mode: what the frozen regime caches
    for every film. The layers are shared, so the preprocessing and the weights are the classifier's."""
    films = keras.Input(model.input.shape[1:], dtype=model.input.dtype, name="film")
    return keras.Model(films, backbone_of(model)(model.get_layer("preprocess")(films), training=False),
                       name="feature_extractor")


def _build_backbone(backbone: Backbone, keras_weights: str | None, image_size: int) -> keras.Model:
    """The keras.applications backbone; a failed download of its ImageNet weights is one line. Keras raises a
    bare Exception("URL fetch failure on URL: CODE -- REASON") for an HTTP or network error, and a ValueError
    for a file whose hash does not match (keras.utils.get_file)."""
    try:
        return backbone.build(include_top=False, weights=keras_weights, input_shape=(image_size, image_size, 3))
    except Exception as error:
        message = str(error)
        if keras_weights is None or not (message.startswith("URL fetch failure")
                                         or message.startswith("Incomplete or corrupted file")):
            raise
        raise UserError(f"--weights imagenet: the ImageNet weights of {backbone.name} could not be downloaded "
                        f"({message.splitlines()[0]}); without network, pass --weights none or a backbone "
                        ".weights.h5 file") from None


def _load_backbone_weights(base: keras.Model, weights_file: Path, name: str) -> None:
    """Load a weights file into the backbone, or refuse it in one line. Keras warns once per layer it cannot match
    (a hundred lines for another backbone's Keras-3 .weights.h5) before it raises, or without raising at all, with
    those layers left random: the warnings are caught, and any of them refuses the file too."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            base.load_weights(weights_file)
        except (ValueError, OSError) as error:  # Keras' message lists every layer: its first line says enough
            raise UserError(f"--weights {weights_file}: does not fit {name} "
                            f"({str(error).splitlines()[0][:300]})") from None
    skipped = [str(warning.message) for warning in caught if issubclass(warning.category, UserWarning)]
    if skipped:
        raise UserError(f"--weights {weights_file}: does not fit {name} (Keras could not match {len(skipped)} "
                        f"part(s) of it, the first: {skipped[0].splitlines()[0][:200]})")


def build_model(backbone: Backbone, image_size: int, *, dense_units: int = settings.DENSE_UNITS,
                dropout: float = settings.DROPOUT, weights: str = settings.WEIGHTS,
                train_backbone: bool = True, head: str = settings.DEFAULT_HEAD, references: int = 0,
                neighbours: int = 0) -> keras.Model:
    """The classifier on `backbone` for uint8 grayscale films of `image_size` (shape [size, size, 1]),
    outputting P(pneumonia) in float32.

    `weights`: "imagenet" (or "pretrained"), "none", a backbone weights file, or a folder or gs:// prefix of the
    ImageNet files and keras-hub presets (cxr.training.weights; clusters without internet).
    `train_backbone` False: the backbone is frozen, in inference mode (BatchNormalization included) for good.
    `head`: settings.HEADS; knn takes its number of reference films and of `neighbours` (its weights, the
    references, are set after fitting).
    Under a mixed_float16 policy the last layer stays float32, so the sigmoid and the loss keep their precision.
    """
    keras_weights, weights_file = resolve_weights(weights, backbone.name, image_size)
    base = _build_backbone(backbone, keras_weights, image_size)
    if weights_file is not None:
        _load_backbone_weights(base, weights_file, backbone.name)
    if keras_weights is None and weights_file is None:
        # From scratch there are no ImageNet statistics, and Keras' 0.99 momentum lags for hundreds of steps:
        # inference then sees stale statistics and predicts one class (settings.FROM_SCRATCH_BN_MOMENTUM).
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = settings.FROM_SCRATCH_BN_MOMENTUM
    base.trainable = train_backbone
    films = keras.Input((image_size, image_size, 1), dtype="uint8", name="film")
    # float32 whatever the policy: ImageNet mean subtraction loses precision in float16.
    images = BackbonePreprocessing(backbone.name, dtype="float32", name="preprocess")(films)
    return keras.Model(films, _head(base(images), head, dense_units, dropout, references, neighbours),
                       name=f"{backbone.name}_classifier")


def _head(features, head: str, dense_units: int, dropout: float, references: int, neighbours: int):
    """The head on the backbone's output; its last layer, "pneumonia", float32."""
    if head == "seed":
        hidden = keras.layers.Flatten(name="flatten")(features)
        hidden = keras.layers.Dense(dense_units, activation="relu", name="dense")(hidden)
        hidden = keras.layers.Dropout(dropout, name="dropout")(hidden)
        return keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="pneumonia")(hidden)
    pooled = FeaturePooling(dtype="float32", name="pooling")(features)
    if head == "linear":
        return keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="pneumonia")(pooled)
    if head == "knn":
        return NearestNeighbours(references, neighbours, dtype="float32", name="pneumonia")(pooled)
    raise UserError(f"--head must be one of {', '.join(settings.HEADS)}, got {head!r}")
