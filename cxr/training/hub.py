"""The keras-hub backbones: DINOv2 small and base, and MedSigLIP's vision tower, as token models.

Each is built as a Keras model from 0-255-scaled RGB images [n, s, s, 3] (its image converter's scale and offset
applied before, in BackbonePreprocessing) to its final, normed token sequence [n, 1 + patches, width]: token 0
summarises the film (DINOv2's class token; MedSigLIP, which has none, its attention-pooling head's output), and the
patch tokens follow in row-major order. That is the contract of the frozen regime's pooling (the class token
beside the mean patch token, as the DINOv2 paper's linear evaluation) and of Grad-CAM on the patch grid.

With weights None the class is constructed from the hyperparameters below, with random weights and no network
(`from_preset(load_weights=False)` still downloads the preset's config.json). Otherwise keras-hub loads a preset:
its name (kagglehub downloads it from Kaggle Models with the environment's Kaggle credentials) or a folder.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras

from cxr.errors import UserError

# ImageNet's mean and standard deviation, which DINOv2's image converter applies (keras_hub/src/utils/transformers/
# convert_dinov2.py takes them from the Hugging Face preprocessor_config.json of facebook/dinov2-*).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class HubArchitecture:
    preset: str  # the keras-hub preset whose architecture and weights this is
    family: str  # "dinov2" (DINOV2Backbone) or "siglip" (SigLIPVisionEncoder)
    # The class's hyperparameters, as keras-hub names them (for DINOv2, as convert_dinov2.py converts the Hugging
    # Face config.json); image_shape is added at build time.
    config: dict
    scale: tuple[float, float, float]  # the image converter's: pixel * scale + offset, per RGB channel
    offset: tuple[float, float, float]
    pretrained_size: int | None = None  # the only input size the preset's weights fit; None: any multiple of patch

    @property
    def patch_size(self) -> int:
        return int(self.config["patch_size"])


_DINOV2 = dict(patch_size=14, layer_scale_init_value=1.0, num_register_tokens=0, use_mask_token=True,
               use_swiglu_ffn=False, dropout_rate=0.0, drop_path_rate=0.0, position_embedding_shape=(518, 518),
               antialias_in_interpolation=False, apply_layernorm=False)
_DINOV2_SCALE = tuple(1 / (255 * std) for std in IMAGENET_STD)
_DINOV2_OFFSET = tuple(-mean / std for mean, std in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True))

ARCHITECTURES: dict[str, HubArchitecture] = {
    # facebook/dinov2-small and -base (Oquab et al. 2023): ViT-S/14 and ViT-B/14, MLP ratio 4, LayerScale 1.0,
    # trained at 518 px (the position embeddings' grid, interpolated to the input size), no register tokens.
    "DINOv2Small": HubArchitecture("dinov2_small", "dinov2", dict(
        _DINOV2, num_layers=12, hidden_dim=384, num_heads=6, intermediate_dim=1536), _DINOV2_SCALE, _DINOV2_OFFSET),
    "DINOv2Base": HubArchitecture("dinov2_base", "dinov2", dict(
        _DINOV2, num_layers=12, hidden_dim=768, num_heads=12, intermediate_dim=3072), _DINOV2_SCALE, _DINOV2_OFFSET),
    # google/medsiglip-448's vision tower: SigLIP So400m/14 (27 layers, width 1152, 16 heads, MLP 4304) at 448 px,
    # as its model card names it (not checked against the preset's config.json: only --weights none uses these);
    # SigLIP's converter maps 0-255 to [-1, 1]. Its position embeddings are a fixed 32 x 32 grid: the pretrained
    # weights fit 448 px only.
    "MedSigLIP": HubArchitecture("medsiglip_900m_448", "siglip", dict(
        patch_size=14, num_layers=27, hidden_dim=1152, num_heads=16, intermediate_dim=4304,
        intermediate_activation="gelu_approximate", layer_norm_epsilon=1e-6),
        (1 / 127.5,) * 3, (-1.0,) * 3, pretrained_size=448),
}


def architecture(name: str) -> HubArchitecture:
    return ARCHITECTURES[name]


def scaling(name: str) -> Callable:
    """The image converter of backbone `name` as a function of 0-255 RGB images."""
    def convert(images):
        found = architecture(name)
        return images * keras.ops.convert_to_tensor(found.scale) + keras.ops.convert_to_tensor(found.offset)

    return convert


def _classes(family: str) -> tuple[type, ...]:
    import keras_hub

    if family == "dinov2":
        return (keras_hub.models.DINOV2Backbone,)
    return (keras_hub.models.SigLIPVisionEncoder, keras_hub.models.SigLIPBackbone)


def pretrained(preset: str, source: str, image_shape: tuple[int, int, int] | None = None) -> keras.Model:
    """The keras-hub backbone of `preset` loaded from `source` (its name: downloaded through kagglehub; or a
    folder), the vision tower alone for SigLIP; one line when it cannot be had."""
    import keras_hub

    family = next(found.family for found in ARCHITECTURES.values() if found.preset == preset)
    overrides = {"image_shape": image_shape} if image_shape is not None and family == "dinov2" else {}
    local = Path(source).is_dir()
    try:
        model = keras_hub.models.Backbone.from_preset(source, **overrides)
    except Exception as error:  # kagglehub and keras-hub raise many kinds; the first line names the cause
        cause = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        if local:
            raise UserError(f"--weights {source}: keras-hub cannot load this {preset} preset ({cause}); save it "
                            "again with `make weights DIR=`") from None
        licence = " and its licence accepted on Kaggle" if family == "siglip" else ""
        raise UserError(f"--weights imagenet: the keras-hub preset {preset} could not be downloaded ({cause}); it "
                        f"needs network, Kaggle credentials (KAGGLE_USERNAME and KAGGLE_KEY){licence}; without "
                        "them pass --weights none or a folder `make weights DIR=` filled") from None
    if not isinstance(model, _classes(family)):
        raise UserError(f"--weights {source}: holds a {type(model).__name__}, not the {preset} backbone")
    return model.vision_encoder if isinstance(model, keras_hub.models.SigLIPBackbone) else model


def random(name: str, image_shape: tuple[int, int, int]) -> keras.Model:
    """Backbone `name` with random weights, built from its hyperparameters: no network."""
    import keras_hub

    found = architecture(name)
    cls = keras_hub.models.DINOV2Backbone if found.family == "dinov2" else keras_hub.models.SigLIPVisionEncoder
    return cls(**found.config, image_shape=image_shape)


@keras.saving.register_keras_serializable(package="cxr")
class PatchTokens(keras.layers.Layer):
    """The identity on [n, patches, width], declaring that shape: keras-hub 0.32's SigLIPVisionEmbedding declares
    one token more than it computes (its compute_output_shape counts a class token SigLIP does not have), and the
    layers after it would be built for that wrong count."""

    def __init__(self, patches: int, **kwargs):
        super().__init__(**kwargs)
        self.patches = patches

    def call(self, tokens):
        return keras.ops.reshape(tokens, (-1, self.patches, keras.ops.shape(tokens)[-1]))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.patches, input_shape[-1])

    def get_config(self) -> dict:
        return {**super().get_config(), "patches": self.patches}


def token_model(name: str, core: keras.Model, image_shape: tuple[int, int, int]) -> keras.Model:
    """[n, s, s, 3] -> the final normed tokens [n, 1 + patches, width], token 0 first (module docstring). Made of
    `core`'s own layers, so its weights are the ones loaded."""
    images = keras.Input(image_shape, name="images")
    if architecture(name).family == "dinov2":
        tokens, _ = core.encoder(core.embeddings(images))
        tokens = core.layernorm(tokens)  # class token first, then the patches (no register tokens in these)
    else:
        width, patches = int(core.hidden_dim), (image_shape[0] // int(core.patch_size)) ** 2
        tokens = PatchTokens(patches, name="patch_tokens")(core.embedding(images))
        for block in core.encoder_layers:
            tokens = block(tokens)
        tokens = core.post_layer_norm(tokens)
        # SigLIP has no class token: its multi-head attention pooling (MAP) head's output, the image embedding
        # SigLIP was trained to align with text, takes token 0's place.
        pooled = keras.layers.Reshape((1, width), name="map_token")(core.head(tokens))
        tokens = keras.layers.Concatenate(axis=1, name="map_and_patches")([pooled, tokens])
    return keras.Model(images, tokens, name=name.lower())


def build(name: str, *, include_top: bool = False, weights: str | None = None,
          input_shape: tuple[int, int, int]) -> keras.Model:
    """The token model of backbone `name` at `input_shape`, the way keras.applications constructors are called:
    `weights` None for random weights, else the preset name or folder cxr.training.weights resolved."""
    del include_top  # a token model has no classification top
    found = architecture(name)
    if input_shape[0] % found.patch_size:
        raise UserError(f"{name}: the image size must be a multiple of its patch size, {found.patch_size} px; got "
                        f"{input_shape[0]}")
    if weights is None:
        return token_model(name, random(name, input_shape), input_shape)
    if found.pretrained_size is not None and input_shape[0] != found.pretrained_size:
        raise UserError(f"{name}: its pretrained weights fit {found.pretrained_size} px only (fixed position "
                        f"embeddings); got --image-size {input_shape[0]}: pass 0 (native) or --weights none")
    print(f"{name}: loading the keras-hub preset {weights}", file=sys.stderr)
    return token_model(name, pretrained(found.preset, weights, input_shape), input_shape)
