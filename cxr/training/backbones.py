"""The five ImageNet backbones of the study; adding a sixth is one entry in BACKBONES."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import keras

from cxr import settings
from cxr.errors import UserError
from cxr.training.plan import canonical_backbone


@dataclass(frozen=True)
class Backbone:
    name: str
    build: Callable[..., keras.Model]  # keras.applications constructor
    preprocess_input: Callable  # the family's own input scaling (caffe BGR means, or [-1, 1])
    native_size: int  # the ImageNet training resolution (docs/decisions.md)
    min_size: int  # the smallest input the architecture accepts


_apps = keras.applications
BACKBONES: dict[str, Backbone] = {b.name.lower(): b for b in (
    Backbone("MobileNet", _apps.MobileNet, _apps.mobilenet.preprocess_input, 224, 32),
    Backbone("InceptionV3", _apps.InceptionV3, _apps.inception_v3.preprocess_input, 299, 75),
    Backbone("Xception", _apps.Xception, _apps.xception.preprocess_input, 299, 71),
    Backbone("ResNet50", _apps.ResNet50, _apps.resnet50.preprocess_input, 224, 32),
    Backbone("VGG16", _apps.VGG16, _apps.vgg16.preprocess_input, 224, 32),
)}


@keras.saving.register_keras_serializable(package="cxr")
class BackbonePreprocessing(keras.layers.Layer):
    """uint8 grayscale films -> the backbone's input: float32, three channels, the family's own scaling.

    Inside the model it runs on the accelerator, so the host ships 1 byte per pixel instead of 12 (three float32
    channels), and a saved model.keras takes raw pixels.
    """

    def __init__(self, backbone: str, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone

    def call(self, films):
        images = keras.ops.repeat(keras.ops.cast(films, "float32"), 3, axis=-1)
        return get_backbone(self.backbone).preprocess_input(images)

    def get_config(self) -> dict:
        return {**super().get_config(), "backbone": self.backbone}


def get_backbone(name: str) -> Backbone:
    """The backbone called `name`, in any letter case."""
    return BACKBONES[canonical_backbone(name).lower()]


def input_size(backbone: Backbone, requested: int) -> int:
    """The input size to train at: the native one for 0, else `requested`, raised to the backbone's minimum.

    Raising rather than refusing lets one small size serve a whole comparison (InceptionV3 needs 75 px,
    Xception 71, the others 32); the size used is printed and recorded in train_metrics.json.
    """
    if not 0 <= requested <= settings.MAX_IMAGE_SIZE:
        raise UserError(f"--image-size must be 0 (native) or a size in pixels up to {settings.MAX_IMAGE_SIZE}, "
                        f"got {requested}")
    if requested == 0:
        return backbone.native_size
    if requested < backbone.min_size:
        print(f"{backbone.name}: --image-size {requested} raised to its minimum, {backbone.min_size}", file=sys.stderr)
        return backbone.min_size
    return requested

