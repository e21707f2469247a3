"""ImageNet weights from a folder or a gs:// prefix laid out as keras.applications names its files.

Nothing downloads here: the files are written by the tests, from backbones built with weights=None, in the legacy
HDF5 layout keras.applications ships them in.
"""

import importlib
import inspect

import h5py
import keras
import numpy as np
import pytest

from cxr import settings
from cxr.errors import UserError
from cxr.training import weights
from cxr.training.backbones import BACKBONES, get_backbone
from cxr.training.model import build_model

# Every backbone the study uses or is growing to use (the registry in cxr/training/backbones.py).
KNOWN = ["MobileNet", "InceptionV3", "Xception", "ResNet50", "VGG16", "EfficientNetV2B0", "EfficientNetV2S",
         "ConvNeXtTiny", "DenseNet121"]


def _keras_source(backbone: str) -> str:
    return inspect.getsource(importlib.import_module(getattr(keras.applications, backbone).__module__))


def test_every_backbone_in_the_registry_has_its_keras_file():
    for backbone in BACKBONES.values():
        if weights.hub_preset(backbone.name) is None:  # keras-hub's load presets (tests/test_hub_backbones.py)
            assert weights.weights_file(backbone.name, backbone.native_size).name.endswith(".h5")
    assert {file.name for file in weights.every_file(KNOWN)} >= {f.name for f in weights.FILES.values()}


@pytest.mark.parametrize("backbone", [name for name in KNOWN if name != "MobileNet"])
def test_names_and_hashes_are_the_installed_keras_ones(backbone):
    """The file name, its folder and its hash as keras.applications' own get_file call has them."""
    file = weights.weights_file(backbone, 0)
    source = _keras_source(backbone)
    assert file.file_hash in source
    assert f"{file.folder}/" in source
    # Most modules spell the name out; ResNet, ConvNeXt and EfficientNetV2 join the model's name ("resnet50",
    # "convnext_tiny") and the rest of it.
    name = file.name
    assert name in source or any(f'"{name[:i]}"' in source and name[i:] in source for i in range(1, len(name)))


def test_mobilenet_has_a_file_per_input_size_as_keras_does():
    source = _keras_source("MobileNet")
    assert '"mobilenet_%s_%d_tf_no_top.h5" % (alpha_text, rows)' in source
    assert "rows not in [128, 160, 192, 224]" in source and "rows = 224" in source
    assert weights.weights_file("mobilenet", 160).name == "mobilenet_1_0_160_tf_no_top.h5"
    assert weights.weights_file("MobileNet", 96).name == "mobilenet_1_0_224_tf_no_top.h5"
    assert len(weights.every_file(["MobileNet"])) == 4


def _keras_file(folder, backbone_name: str, image_size: int) -> tuple[list[np.ndarray], str]:
    """A backbone with weights=None saved under its keras.applications name, in the layout Keras ships."""
    backbone = get_backbone(backbone_name)
    base = backbone.build(include_top=False, weights=None, input_shape=(image_size, image_size, 3))
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

    name = weights.weights_file(backbone.name, image_size).name
    with h5py.File(folder / name, "w") as stream:
        save_weights_to_hdf5_group(stream, base)
    return [w.numpy() for w in base.weights], name


def _backbone_weights(model: keras.Model) -> list[np.ndarray]:
    base = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    return [w.numpy() for w in base.weights]


@pytest.fixture(scope="module")
def mobilenet_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imagenet")
    expected, _ = _keras_file(folder, "MobileNet", 32)
    return folder, expected


def _assert_equal(expected: list[np.ndarray], got: list[np.ndarray]) -> None:
    assert len(expected) == len(got) > 50
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_folder_of_keras_files_loads_into_the_backbone(mobilenet_folder):
    folder, expected = mobilenet_folder
    _assert_equal(expected, _backbone_weights(build_model(get_backbone("MobileNet"), 32, weights=str(folder))))


def test_imagenet_reads_the_baked_folder_before_any_download(mobilenet_folder, monkeypatch):
    folder, expected = mobilenet_folder
    monkeypatch.setattr(settings, "IMAGENET_WEIGHTS", str(folder))
    _assert_equal(expected, _backbone_weights(build_model(get_backbone("MobileNet"), 32, weights="imagenet")))


def test_imagenet_falls_back_to_keras_when_the_baked_folder_lacks_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(settings, "IMAGENET_WEIGHTS", str(tmp_path))
    assert weights.resolve("imagenet", "VGG16", 224) == ("imagenet", None)
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 is not in CXR_IMAGENET_WEIGHTS" in capsys.readouterr().err
    monkeypatch.setattr(settings, "IMAGENET_WEIGHTS", "")
    assert weights.resolve("imagenet", "VGG16", 224) == ("imagenet", None)


def test_a_gs_prefix_of_keras_files_loads_into_the_backbone(mobilenet_folder, bucket):
    folder, expected = mobilenet_folder
    name = weights.weights_file("MobileNet", 32).name
    bucket.blob(f"keras/models/{name}").upload_from_filename(str(folder / name))
    model = build_model(get_backbone("MobileNet"), 32, weights=f"gs://{bucket.name}/keras/models")
    _assert_equal(expected, _backbone_weights(model))


def test_a_gs_prefix_without_the_file_is_one_line(bucket):
    with pytest.raises(UserError, match=f"--weights gs://{bucket.name}/empty: holds no "
                                        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5, the ImageNet file of"):
        weights.resolve(f"gs://{bucket.name}/empty", "ResNet50", 224)


def test_a_file_that_is_not_keras_own_is_refused(tmp_path):
    (tmp_path / weights.FILES["VGG16"].name).write_bytes(b"truncated")
    with pytest.raises(UserError, match="not the file keras.applications downloads as vgg16_weights_tf_"):
        weights.resolve(str(tmp_path), "VGG16", 224)


def test_a_folder_without_the_backbones_file_is_one_line(tmp_path):
    with pytest.raises(UserError, match=r"holds no convnext_tiny_notop.h5, the ImageNet file of ConvNeXtTiny"):
        weights.resolve(str(tmp_path), "ConvNeXtTiny", 224)


def test_check_names_every_missing_file_and_exits_2(tmp_path, capsys):
    for file in weights.every_file(["MobileNet"]):
        (tmp_path / file.name).write_bytes(b"no hash to check")
    missing = ": missing xception_weights_tf_dim_ordering_tf_kernels_notop.h5; `make weights DIR="
    with pytest.raises(UserError, match=missing):
        weights.check(tmp_path, ["MobileNet", "Xception"])
    weights.check(tmp_path, ["MobileNet"])
    assert weights.main(["--check", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"cxr weights: error: {tmp_path}: missing ")


def test_download_keeps_what_is_there_and_never_overwrites_a_changed_file(tmp_path):
    for file in weights.every_file(["MobileNet"]):
        (tmp_path / file.name).write_bytes(b"kept")
    assert weights.download(tmp_path, ["MobileNet"]) == []  # nothing to fetch, no network needed
    changed = tmp_path / weights.FILES["ResNet50"].name
    changed.write_bytes(b"someone's file")
    with pytest.raises(UserError, match="not the file keras.applications downloads"):
        weights.download(tmp_path, ["ResNet50"])
    assert changed.read_bytes() == b"someone's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([changed.name] + [
        f.name for f in weights.every_file(["MobileNet"])])


def test_a_foreign_keras3_weights_file_is_refused_in_one_line_without_warnings(tmp_path, capfd):
    """Another backbone's Keras-3 .weights.h5: Keras warns about every layer it cannot match before it raises;
    the user must read the one-line refusal alone."""
    foreign = tmp_path / "vgg16.weights.h5"
    get_backbone("VGG16").build(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(foreign)
    capfd.readouterr()
    with pytest.raises(UserError, match=f"--weights {foreign}: does not fit MobileNet"):
        build_model(get_backbone("MobileNet"), 32, weights=str(foreign))
    captured = capfd.readouterr()
    assert "Skipping" not in captured.err and "UserWarning" not in captured.err and captured.out == ""


def test_the_frozen_regime_keys_a_folder_and_a_gs_prefix_by_the_file_they_hold(mobilenet_folder, bucket):
    """The frozen regime's cache key takes every --weights the fine-tuned regime takes, with the same messages."""
    from cxr.training import features

    folder, _ = mobilenet_folder
    name = weights.weights_file("MobileNet", 32).name
    expected = f"sha256:{features.sha256(folder / name)}"
    assert features.weights_id(str(folder), "MobileNet", 32) == features.weights_id(str(folder / name), "MobileNet",
                                                                                    32) == expected
    bucket.blob(f"keras/{name}").upload_from_filename(str(folder / name))
    assert features.weights_id(f"gs://{bucket.name}/keras", "MobileNet", 32) == expected
    for source in (str(folder), f"gs://{bucket.name}/keras"):
        with pytest.raises(UserError) as finetune:
            weights.resolve(source, "ResNet50", 32)
        with pytest.raises(UserError) as frozen:
            features.weights_id(source, "ResNet50", 32)
        assert str(frozen.value) == str(finetune.value)
        assert "holds no resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in str(frozen.value)
