"""Pretrained weights without a download: the files keras.applications fetches and the keras-hub presets, read
from a folder or a gs:// prefix.

`weights` is "imagenet" (or "pretrained": each backbone's published weights), "none", a weights file for one
backbone, or a folder or gs:// prefix holding every keras.applications backbone's ImageNet file under the name
keras.applications downloads it as, and every keras-hub backbone's preset in a folder named after the preset
(`dinov2_small/`: config.json, metadata.json, model.weights.h5, as `save_to_preset` writes them). A file is loaded
as it lies (a gs:// one is copied to a temporary folder first) after the same hash check Keras makes; a preset after
a check that its files are all there and readable; nothing is copied into Keras' or kagglehub's cache
(docs/decisions.md, "ImageNet weights without network").

    python -m cxr.training.weights --out DIR     download every backbone's weights into DIR (`make weights`)
    python -m cxr.training.weights --check DIR   check that DIR holds them all, unchanged (`make images WEIGHTS=`)
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cxr import settings
from cxr.errors import UserError

# Where keras.applications 3.15 downloads the weights from (the WEIGHTS_PATH constants of its modules).
KERAS_ORIGIN = "https://storage.googleapis.com/tensorflow/keras-applications/"
# MobileNet has one file per input size; Keras loads the 224-px one for any other size (mobilenet.py).
MOBILENET_ROWS = (128, 160, 192, 224)


@dataclass(frozen=True)
class WeightsFile:
    name: str  # the file name in Keras' cache, ~/.keras/models
    folder: str  # its folder under KERAS_ORIGIN
    file_hash: str | None  # what Keras checks: md5 (32 hex digits) or sha256 (64); None where Keras checks none

    @property
    def origin(self) -> str:
        return f"{KERAS_ORIGIN}{self.folder}/{self.name}"


# The include_top=False files of keras.applications 3.15, with the hashes its get_file calls pass (read in
# keras/src/applications/*.py; tests/test_weights.py checks them against the installed Keras).
FILES: dict[str, WeightsFile] = {
    "InceptionV3": WeightsFile("inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5", "inception_v3",
                       "bcbd6486424b2319ff4ef7d526e38f63"),
    "Xception": WeightsFile("xception_weights_tf_dim_ordering_tf_kernels_notop.h5", "xception",
                       "b0042744bf5b25fce3cb969f33bebb97"),
    "ResNet50": WeightsFile("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", "resnet",
                       "4d473c1dd8becc155b73f8504c6f6626"),
    "VGG16": WeightsFile("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "vgg16",
                       "6d6bbae143d832006294945121d1f1fc"),
    "DenseNet121": WeightsFile("densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5", "densenet",
                       "30ee3e1110167f948a6b9946edeeb738"),
    "EfficientNetV2B0": WeightsFile("efficientnetv2-b0_notop.h5", "efficientnet_v2",
                       "893217f2bb855e2983157299931e43ff"),
    "EfficientNetV2S": WeightsFile("efficientnetv2-s_notop.h5", "efficientnet_v2",
                       "af0682fb74e8c54910f2d4393339c070"),
    "ConvNeXtTiny": WeightsFile("convnext_tiny_notop.h5", "convnext",
                       "d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1"),
}
# Keras passes no hash for MobileNet's files (mobilenet.py): they are loaded unchecked, as Keras does.
MOBILENET = {rows: WeightsFile(f"mobilenet_1_0_{rows}_tf_no_top.h5", "mobilenet", None) for rows in MOBILENET_ROWS}
# What keras-hub 0.32's Backbone.save_to_preset writes and from_preset reads (keras_hub/src/utils/preset_utils.py:
# CONFIG_FILE, METADATA_FILE, MODEL_WEIGHTS_FILE; unsharded below its 10 GB shard size, which every backbone here is).
PRESET_FILES = ("config.json", "metadata.json", "model.weights.h5")


def hub_preset(backbone: str) -> str | None:
    """The keras-hub preset of `backbone` (settings.HUB_PRESETS), None for a keras.applications backbone."""
    for name, preset in settings.HUB_PRESETS.items():
        if name.lower() == backbone.lower():
            return preset
    return None


def is_pretrained(weights: str) -> bool:
    """Whether `weights` asks for the backbone's published weights: "imagenet" or its alias "pretrained"."""
    return weights.lower() in settings.PRETRAINED


def weights_file(backbone: str, image_size: int) -> WeightsFile:
    """The file keras.applications loads for `backbone` (include_top=False) at `image_size` pixels."""
    if backbone.lower() == "mobilenet":
        return MOBILENET[image_size if image_size in MOBILENET_ROWS else 224]
    for name, file in FILES.items():
        if name.lower() == backbone.lower():
            return file
    raise UserError(f"no ImageNet weights file is known for {backbone}")


def every_file(backbones: list[str]) -> list[WeightsFile]:
    """Every file the keras.applications backbones among `backbones` can load, at any image size."""
    files = []
    for backbone in backbones:
        if hub_preset(backbone) is None:
            files += list(MOBILENET.values()) if backbone.lower() == "mobilenet" else [weights_file(backbone, 0)]
    return files


def every_preset(backbones: list[str]) -> list[str]:
    """The keras-hub presets of `backbones`."""
    return [preset for backbone in backbones if (preset := hub_preset(backbone)) is not None]


def _hash(path: Path, expected: str) -> str:
    """The file's hash in the algorithm of `expected`, as keras.utils.file_utils.resolve_hasher picks it."""
    hasher = hashlib.sha256() if len(expected) == 64 else hashlib.md5()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def verify(path: Path, file: WeightsFile) -> None:
    """Refuse a file that is not the one Keras would have downloaded (truncated, another model's, another version)."""
    if file.file_hash is not None and (found := _hash(path, file.file_hash)) != file.file_hash:
        raise UserError(f"{path}: not the file keras.applications downloads as {file.name} "
                        f"(hash {found}, expected {file.file_hash}); download it again with `make weights`")


def _from_gcs(prefix: str, file: WeightsFile) -> Path | None:
    """The file under the gs:// prefix, copied to a temporary folder removed when the process ends."""
    from cxr.data import gcs

    folder = Path(tempfile.mkdtemp(prefix="cxr-weights-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    target = folder / file.name  # the name keeps the .h5 ending by which Keras picks its loader
    try:
        found = gcs.download(gcs.parse_gcs_uri(prefix), file.name, target)
    except gcs.CLOUD_ERRORS as error:
        raise gcs.one_line(error) from None
    return target if found else None


def preset_problem(folder: Path) -> str | None:
    """Why `folder` is not a whole keras-hub preset (a file missing, a config that is not JSON, a weights file that
    HDF5 cannot open: half-copied or damaged), or None when it is one."""
    missing = [name for name in PRESET_FILES if not (folder / name).is_file()]
    if missing:
        return f"no {', '.join(missing)}"
    try:
        json.loads((folder / "config.json").read_text())["registered_name"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"config.json is not a keras-hub config ({type(error).__name__})"
    import h5py

    try:
        with h5py.File(folder / "model.weights.h5", "r") as weights:
            list(weights.keys())
    except OSError as error:
        return f"model.weights.h5 is damaged ({str(error).splitlines()[0][:200]})"
    return None


def _preset_from_gcs(prefix: str, preset: str) -> Path | None:
    """The preset folder under the gs:// prefix, copied to a temporary folder removed when the process ends; None
    when the prefix holds none of its files."""
    from cxr.data import gcs

    folder = Path(tempfile.mkdtemp(prefix="cxr-weights-")) / preset
    atexit.register(shutil.rmtree, folder.parent, ignore_errors=True)
    folder.mkdir()
    source = gcs.parse_gcs_uri(prefix.rstrip("/") + "/" + preset)
    try:
        found = [gcs.download(source, name, folder / name) for name in PRESET_FILES]
    except gcs.CLOUD_ERRORS as error:
        raise gcs.one_line(error) from None
    return folder if any(found) else None


def find_preset(source: str, preset: str) -> Path | None:
    """The keras-hub preset `preset` in a folder or under a gs:// prefix, checked; None when it is not there."""
    if source.startswith("gs://"):
        folder, shown = _preset_from_gcs(source, preset), f"{source.rstrip('/')}/{preset}/"
    else:
        folder = Path(source) / preset
        folder, shown = (folder if folder.exists() else None), folder
    if folder is not None and (problem := preset_problem(folder)):
        raise UserError(f"{shown}: not a whole keras-hub preset ({problem}); save it again with "
                        f"`make weights DIR=`")
    return folder


def find(source: str, file: WeightsFile) -> Path | None:
    """The file in a folder or under a gs:// prefix, checked; None when it is not there."""
    if source.startswith("gs://"):
        path = _from_gcs(source, file)
    else:
        path = Path(source) / file.name
        path = path if path.is_file() else None
    if path is not None:
        verify(path, file)
    return path


def resolve(weights: str, backbone: str, image_size: int) -> tuple[str | None, Path | None]:
    """(what the backbone's constructor loads itself, a file to load into the backbone after building it).

    The first is "imagenet" for keras.applications; for a keras-hub backbone, its preset's name (kagglehub
    downloads it) or a checked preset folder."""
    preset = hub_preset(backbone)
    if preset is not None and not Path(weights).is_file():
        return _resolve_preset(weights, backbone, preset), None
    if is_pretrained(weights):
        if not settings.IMAGENET_WEIGHTS:
            return "imagenet", None
        file = weights_file(backbone, image_size)
        path = find(settings.IMAGENET_WEIGHTS, file)
        if path is None:
            print(f"{backbone}: {file.name} is not in CXR_IMAGENET_WEIGHTS ({settings.IMAGENET_WEIGHTS}); "
                  "Keras downloads it", file=sys.stderr)
            return "imagenet", None
        return None, path
    if weights.lower() == "none":
        return None, None
    if weights.startswith("gs://") or Path(weights).is_dir():
        file = weights_file(backbone, image_size)
        path = find(weights, file)
        if path is None:
            raise UserError(f"--weights {weights}: holds no {file.name}, the ImageNet file of {backbone} "
                            "(`make weights` downloads every backbone's)")
        return None, path
    if Path(weights).is_file():
        return None, Path(weights)
    raise UserError(f"--weights {weights}: not 'imagenet', 'none', a weights file, a folder or a gs:// prefix")


def _resolve_preset(weights: str, backbone: str, preset: str) -> str | None:
    """What keras-hub loads for `backbone`: None for random weights, else a preset name or a checked folder."""
    if is_pretrained(weights):
        if not settings.IMAGENET_WEIGHTS:
            return preset
        folder = find_preset(settings.IMAGENET_WEIGHTS, preset)
        if folder is None:
            print(f"{backbone}: {preset}/ is not in CXR_IMAGENET_WEIGHTS ({settings.IMAGENET_WEIGHTS}); kagglehub "
                  "downloads it", file=sys.stderr)
            return preset
        return str(folder)
    if weights.lower() == "none":
        return None
    if weights.startswith("gs://") or Path(weights).is_dir():
        folder = find_preset(weights, preset)
        if folder is None:
            raise UserError(f"--weights {weights}: holds no {preset}/, the keras-hub preset of {backbone} "
                            "(`make weights` saves every backbone's)")
        return str(folder)
    raise UserError(f"--weights {weights}: not 'imagenet', 'none', a weights file, a folder or a gs:// prefix")


def weights_source(weights: str, backbone: str, image_size: int) -> Path | None:
    """The local file or preset folder `weights` loads into `backbone` (checked, as building the model checks
    it), or None for "imagenet" and "none": what a feature cache's key must hash."""
    if is_pretrained(weights) or weights.lower() == "none":
        return None
    constructor_loads, file = resolve(weights, backbone, image_size)
    return file if file is not None else Path(constructor_loads)


def download(out: Path, backbones: list[str]) -> list[Path]:
    """Download every file `backbones` can load into `out`, through Keras' own get_file and hash check. A file
    already there is checked and kept; nothing else in `out` is touched."""
    import keras

    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise UserError(f"--out {out}: not writable")
    written = [save_preset(out, preset) for preset in every_preset(backbones) if find_preset(str(out), preset) is None]
    for file in every_file(backbones):
        target = out / file.name
        if target.is_file():
            verify(target, file)
            continue
        staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=out))
        try:
            fetched = keras.utils.get_file(file.name, file.origin, file_hash=file.file_hash, cache_dir=str(staging),
                                           cache_subdir="")
            os.replace(fetched, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        written.append(target)
    return written


def save_preset(out: Path, preset: str) -> Path:
    """Download the keras-hub preset through kagglehub and save the part cxr uses into `out/<preset>/`, through a
    partial folder renamed into place once whole."""
    from cxr.training import hub

    target = out / preset
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=out))
    try:
        hub.pretrained(preset, str(preset)).save_to_preset(str(staging))
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def check(folder: Path, backbones: list[str]) -> None:
    """Every file `backbones` can load is in `folder`, unchanged; else one line naming what is missing."""
    missing = [file.name for file in every_file(backbones) if find(str(folder), file) is None]
    missing += [f"{preset}/" for preset in every_preset(backbones) if find_preset(str(folder), preset) is None]
    if missing:
        raise UserError(f"{folder}: missing {', '.join(missing)}; `make weights DIR={folder}` downloads them")


def _registry() -> list[str]:
    from cxr.training.backbones import BACKBONES

    return [backbone.name for backbone in BACKBONES.values()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cxr weights", description=__doc__.split("\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--out", type=Path, help="download every backbone's ImageNet file into this folder")
    action.add_argument("--check", type=Path, help="check that this folder holds them all")
    args = parser.parse_args(argv)
    try:
        if args.out:
            written = download(args.out, _registry())
            total = len(every_file(_registry())) + len(every_preset(_registry()))
            print(f"{args.out}: {len(written)} file(s) or preset(s) downloaded, {total - len(written)} already there")
        else:
            check(args.check, _registry())
            print(f"{args.check}: the pretrained weights of {', '.join(_registry())}")
    except UserError as error:
        print(f"cxr weights: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
