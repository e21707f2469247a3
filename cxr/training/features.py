"""The frozen regime's feature cache: the backbone's output for every train, validation and test film, computed
once per backbone, input size, weights, precision and dataset, and shared by every seed, rerun and evaluation.

A cache is one folder, `<backbone>-<size>px-<digest>/` under the features root (`cxr train --features DIR`), named
after its key and holding:

    train.npy val.npy test.npy     the features [films, h, w, channels], in the reader's film order
    train.csv val.csv test.csv     patient_id, source, label of each row
    backbone.weights.h5            the backbone that computed them (a random one, for weights none, is kept too)
    meta.json                      the key, the format and every file's size and SHA-256
    .cxr-feature-cache             written first: marks the folder as cxr's, complete or not

It is written into `<name>.partial-<random>/`, which is renamed into place only once complete (an atomic rename):
a process killed while extracting leaves a partial folder, never a cache. Only folders holding the marker are ever
cleared or rebuilt: one of the user's that merely has a matching name is left alone. Every use checks meta.json's
key and every file's size and SHA-256 first; a cache that fails the check is rebuilt, never read. Builders take an
exclusive flock on `<name>.lock` (the lock dies with its process): a second training that needs the same cache
waits for the first and then reuses its work. Readers take no lock: a published cache is never modified, and one
found damaged is renamed aside before it is deleted, so an open memmap of it stays valid.

No TensorFlow here: `cxr evaluate` checks a frozen training's saved head predictions without loading a backend.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxr import files, settings
from cxr.errors import UserError
from cxr.outputs import make_folder
from cxr.training.weights import is_pretrained, weights_source

FORMAT = 1  # the layout's version: a cache of another format is rebuilt, never misread
META = "meta.json"
MARKER = ".cxr-feature-cache"  # the first file of every folder this module makes
BACKBONE_WEIGHTS = "backbone.weights.h5"
FILM_COLUMNS = ["patient_id", "source", "label"]
_CHUNK = 1 << 20


def features_file(split: str) -> str:
    return f"{split}.npy"


def films_file(split: str) -> str:
    return f"{split}.csv"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def dataset_fingerprint(data_dir: Path) -> str:
    """SHA-256 of what `cxr preprocess` wrote: stats.json, manifest.csv and every TFRecord shard's bytes. The
    pixels are part of it: two synthetic datasets can share their file names and counts."""
    data_dir = Path(data_dir)
    digest = hashlib.sha256()
    shards = sorted(data_dir.glob("*.tfrecord"))
    for path in [data_dir / files.STATS, data_dir / files.MANIFEST, *shards]:
        if not path.is_file():
            raise UserError(f"missing {path} (run `cxr preprocess` first)")
        digest.update(f"{path.name}\0".encode())
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def weights_id(weights: str, backbone: str, image_size: int) -> str:
    """`--weights` as part of a cache key: imagenet, none, or the content of what it loads into `backbone` (a
    weights file, or a keras-hub preset's files) found as building the model finds it, in a folder or under a gs://
    prefix: its path may move. A folder or prefix that lacks it is refused with the message training gives."""
    if is_pretrained(weights):
        return "imagenet"
    if weights.lower() == "none":
        return "none"
    source = weights_source(weights, backbone, image_size)
    if source.is_file():
        return f"sha256:{sha256(source)}"
    digest = hashlib.sha256()  # a keras-hub preset: every file's name and content
    for path in sorted(path for path in source.iterdir() if path.is_file()):
        digest.update(f"{path.name}\0{sha256(path)}\0".encode())
    return f"sha256:{digest.hexdigest()}"


@dataclass(frozen=True)
class FeatureKey:
    """Everything the features depend on. The seed is not part of it: with weights none the first training's
    random backbone is kept in the cache and every later one loads it, so all seeds see the same features."""

    backbone: str
    image_size: int
    weights: str  # weights_id
    precision: str  # the backbone's compute dtype: float32, or float16 with mixed precision
    dataset: str  # dataset_fingerprint

    def folder_name(self) -> str:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]
        return f"{self.backbone.lower()}-{self.image_size}px-{digest}"


@dataclass(frozen=True)
class FeatureCache:
    """A sound, published cache."""

    folder: Path
    key: FeatureKey
    reused: bool  # found complete, not computed by this process
    seconds: float  # the extraction's wall time; 0 when reused

    def features(self, split: str) -> np.ndarray:
        """[films, h, w, channels], memory-mapped: the page cache is shared by every training reading it."""
        return np.load(self.folder / features_file(split), mmap_mode="r")

    def films(self, split: str) -> pd.DataFrame:
        return pd.read_csv(self.folder / films_file(split), dtype={"patient_id": str, "source": str})

    @property
    def backbone_weights(self) -> Path:
        return self.folder / BACKBONE_WEIGHTS


def _expected_files() -> list[str]:
    return [*(features_file(s) for s in settings.SPLITS), *(films_file(s) for s in settings.SPLITS),
            BACKBONE_WEIGHTS]


def problem(folder: Path, key: FeatureKey) -> str | None:
    """Why `folder` is not a sound cache of `key` (missing, another key or format, a file missing, truncated or
    changed), or None when it is. Reads every byte: the SHA-256 of each file is checked."""
    meta_path = folder / META
    if not meta_path.is_file():
        return "missing" if not folder.exists() else f"no {META}"
    try:
        meta = json.loads(meta_path.read_text())
        if meta["format"] != FORMAT:
            return f"format {meta['format']}, expected {FORMAT}"
        if meta["key"] != asdict(key):
            return "it holds another key"
        for name in _expected_files():
            recorded, path = meta["files"][name], folder / name
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != recorded["bytes"]:
                return f"{name} has {path.stat().st_size} bytes, expected {recorded['bytes']}"
            if sha256(path) != recorded["sha256"]:
                return f"{name} does not match its SHA-256"
        for split in settings.SPLITS:
            rows = len(pd.read_csv(folder / films_file(split)))
            if np.load(folder / features_file(split), mmap_mode="r").shape[0] != rows:
                return f"{split}: features and films disagree"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"unreadable ({type(error).__name__}: {error})"
    return None


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _publish(partial: Path, folder: Path, key: FeatureKey) -> None:
    """Record every file's size and SHA-256 in meta.json (written last), flush it all to disk, and rename the
    partial folder into place."""
    records = {}
    for name in _expected_files():
        path = partial / name
        if not path.is_file():
            raise RuntimeError(f"feature extraction wrote no {name}")  # a bug, not a user's mistake
        _fsync(path)
        records[name] = {"bytes": path.stat().st_size, "sha256": sha256(path)}
    (partial / META).write_text(json.dumps({"format": FORMAT, "key": asdict(key), "files": records}, indent=1))
    _fsync(partial / META)
    os.rename(partial, folder)
    _fsync(folder.parent)


@contextmanager
def _exclusive(lock_path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive flock on `lock_path`, waiting (with one line said) while another process holds it."""
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            print(f"train: waiting for another training to finish extracting {what}", file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def _ours(folder: Path) -> bool:
    """Whether cxr made `folder`: it holds the marker written first, or (caches older than the marker) meta.json."""
    return (folder / MARKER).is_file() or (folder / META).is_file()


def _clear(root: Path, name: str, folder: Path, reason: str) -> None:
    """Remove what a killed extraction left (its partial folders) and a damaged cache; called under the lock, so
    no other extraction of this key is running. A folder without cxr's marker is the user's: never removed."""
    for leftover in root.glob(f"{name}.partial-*"):
        if leftover.is_dir() and not leftover.is_symlink() and _ours(leftover):
            shutil.rmtree(leftover, ignore_errors=True)
    if folder.exists():
        if folder.is_symlink() or not folder.is_dir() or not _ours(folder):
            raise UserError(f"--features {root}: {folder.name} is not a feature cache cxr wrote; move it away")
        print(f"train: the feature cache {folder} is damaged ({reason}); rebuilding it", file=sys.stderr)
        aside = Path(tempfile.mkdtemp(prefix=f"{name}.damaged-", dir=root))
        os.rename(folder, aside / folder.name)  # readers that opened it keep their files until they close them
        shutil.rmtree(aside, ignore_errors=True)


def open_cache(root: Path, key: FeatureKey, extract: Callable[[Path], None]) -> FeatureCache:
    """The sound cache of `key` under `root`: reused when there is one (after its check), else built by
    `extract(folder)`, which writes the features, film lists and backbone weights into a new folder."""
    root = Path(root)
    make_folder(root, "--features")
    name = key.folder_name()
    folder = root / name
    if problem(folder, key) is None:
        print(f"train: reusing cached features {folder}", file=sys.stderr, flush=True)
        return FeatureCache(folder, key, reused=True, seconds=0.0)
    with _exclusive(root / f"{name}.lock", f"{folder}"):
        reason = problem(folder, key)  # another training may have built it while this one waited
        if reason is None:
            print(f"train: reusing cached features {folder}", file=sys.stderr, flush=True)
            return FeatureCache(folder, key, reused=True, seconds=0.0)
        _clear(root, name, folder, reason)
        # A fresh name: never one of the user's folders, nor a leftover that a killed process of the same pid left.
        partial = Path(tempfile.mkdtemp(prefix=f"{name}.partial-", dir=root))
        partial.chmod(0o755)  # mkdtemp's 0700 would hide a published cache from the volume's other users
        (partial / MARKER).write_text(json.dumps({"format": FORMAT, "key": asdict(key)}, indent=1))
        print(f"train: extracting {key.backbone} features at {key.image_size} px into {folder}", file=sys.stderr,
              flush=True)
        started = time.monotonic()
        try:
            extract(partial)
            _publish(partial, folder, key)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return FeatureCache(folder, key, reused=False, seconds=time.monotonic() - started)


def saved_head_predictions(model_dir: Path, data_dir: Path, trained: dict) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """(validation, test) predictions a frozen training wrote from its cached features (cxr.training.frozen
    head_predictions), when they are of data_dir's films (the dataset fingerprint matches); None otherwise, and
    the model itself must predict. Without TensorFlow: a frozen evaluation never loads a backend."""
    path = Path(model_dir) / files.HEAD_PREDICTIONS
    features = trained.get("features") or {}
    if trained.get("regime") != "frozen" or not path.is_file() or "key" not in features:
        return None
    if features["key"]["dataset"] != dataset_fingerprint(data_dir):
        return None
    columns = ["patient_id", "source", "label", "probability"]
    try:
        table = pd.read_csv(path, dtype={"patient_id": str, "source": str}, float_precision="round_trip")
        probabilities = table["probability"].to_numpy(dtype=float)
        val, test = (table[table["split"] == split][columns].reset_index(drop=True) for split in ("val", "test"))
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"{path} is damaged ({type(error).__name__}: {error}); train again into a new folder") from None
    if not (np.isfinite(probabilities) & (probabilities >= 0) & (probabilities <= 1)).all() or test.empty:
        raise UserError(f"{path} is damaged: it needs test rows and probabilities in [0, 1]; train again into a new "
                        "folder")
    return val, test
