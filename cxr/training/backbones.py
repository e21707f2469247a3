"""The backbones the study can train: the seed's five ImageNet CNNs (2014-2017), four of today's (EfficientNetV2,
ConvNeXt, DenseNet121), and three foundation models from keras-hub (DINOv2 small and base, MedSigLIP: vision
transformers, cxr.training.hub); adding another is one entry in BACKBONES and its name in settings.ALL_BACKBONES."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass

import keras

from cxr import settings
from cxr.errors import UserError
from cxr.training import hub
from cxr.training.plan import canonical_backbone


@dataclass(frozen=True)
class Backbone:
    name: str
    build: Callable[..., keras.Model]  # keras.applications constructor
    # The family's own input scaling of 0-255 RGB: caffe BGR means, [-1, 1], torch's ImageNet mean and std, or
    # none for the families that scale inside the model.
    preprocess_input: Callable
    native_size: int  # the ImageNet training resolution (docs/backbones.md)
    min_size: int  # the smallest input the architecture accepts
    patch_size: int = 1  # a vision transformer's: its input size must be a multiple of it


def inside_the_model(images):
    """No scaling: EfficientNetV2 and ConvNeXt, built with include_preprocessing=True, take 0-255 RGB and rescale
    and normalise in their own first layers (their keras preprocess_input is a pass-through too). Scaling here as
    well would feed them values near 0."""
    return images


def _scaling_inside(constructor: Callable[..., keras.Model]) -> Callable[..., keras.Model]:
    """`constructor` with its preprocessing layers pinned on, whatever Keras' default becomes."""
    return functools.update_wrapper(functools.partial(constructor, include_preprocessing=True), constructor)


_apps = keras.applications
BACKBONES: dict[str, Backbone] = {b.name.lower(): b for b in (
    # The seed's five.
    Backbone("MobileNet", _apps.MobileNet, _apps.mobilenet.preprocess_input, 224, 32),
    Backbone("InceptionV3", _apps.InceptionV3, _apps.inception_v3.preprocess_input, 299, 75),
    Backbone("Xception", _apps.Xception, _apps.xception.preprocess_input, 299, 71),
    Backbone("ResNet50", _apps.ResNet50, _apps.resnet50.preprocess_input, 224, 32),
    Backbone("VGG16", _apps.VGG16, _apps.vgg16.preprocess_input, 224, 32),
    # Today's: EfficientNetV2 (Tan & Le 2021) B0 and S, ConvNeXt (Liu et al. 2022) Tiny, and DenseNet121, CheXNet's
    # backbone (Rajpurkar et al. 2017). Sizes from keras.applications 3.15 (docs/backbones.md).
    Backbone("EfficientNetV2B0", _scaling_inside(_apps.EfficientNetV2B0), inside_the_model, 224, 32),
    Backbone("EfficientNetV2S", _scaling_inside(_apps.EfficientNetV2S), inside_the_model, 384, 32),
    Backbone("ConvNeXtTiny", _scaling_inside(_apps.ConvNeXtTiny), inside_the_model, 224, 32),
    Backbone("DenseNet121", _apps.DenseNet121, _apps.densenet.preprocess_input, 224, 32),
    # keras-hub's foundation models (docs/backbones.md): patch 14, so 28 px is the smallest input with a 2 x 2 grid
    # of patches for Grad-CAM.
    *(Backbone(name, functools.partial(hub.build, name), hub.scaling(name), native, 28, 14)
      for name, native in (("DINOv2Small", 224), ("DINOv2Base", 224), ("MedSigLIP", 448))),
)}


@keras.saving.register_keras_serializable(package="cxr")
class BackbonePreprocessing(keras.layers.Layer):
    """uint8 grayscale films -> the backbone's input: float32, three channels, the family's own scaling (none for
    the families that scale inside the model: then the three channels stay 0-255).

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
    if requested % backbone.patch_size:
        size = requested - requested % backbone.patch_size
        print(f"{backbone.name}: --image-size {requested} lowered to {size}, a multiple of its patch size "
              f"({backbone.patch_size} px)", file=sys.stderr)
        return size
    return requested

