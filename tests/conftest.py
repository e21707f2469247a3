"""Shared fixtures: one small synthetic dataset, ingested and preprocessed once per test run, and the trained
models the tests share, each trained once per run however many xdist workers ask for it (a training is the
dearest thing a test does)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from filelock import FileLock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from cxr.data.ingest import ingest  # noqa: E402
from cxr.data.preprocess import Settings, preprocess  # noqa: E402
from cxr.data.synth import synthesize  # noqa: E402

# Small enough to keep `make test` in minutes on 2 cores, large enough for a patient split with both classes.
TINY_PER_CLASS = 24
TINY_IMAGE_SIZE = 40
# A MobileNet that learns something in two epochs at 32 px: what tests/test_train.py trains, resumes and refuses.
TINY_TRAINING = dict(backbone="mobilenet", image_size=32, weights="none", batch_size=16, learning_rate=1e-3,
                     patience=3)


def made_once(tmp_path_factory, name: str, make):
    """What `make(folder)` returned (JSON), made once per test run: the first xdist worker to ask makes it in the
    run's shared temporary folder while holding a file lock, the others wait and read it (pytest-xdist's recipe
    for session fixtures). A worker that failed while making it leaves no record, and the next one starts over."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's folder, above each worker's own
    folder, record = base / name, base / f"{name}.json"
    with FileLock(base / f"{name}.lock"):
        if not record.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            record.write_text(json.dumps(make(folder)))
    return json.loads(record.read_text())


@pytest.fixture(scope="session")
def quick_xla(tmp_path_factory) -> dict[str, str]:
    """Environment for a process whose time goes to compiling small programs with XLA on the CPU (JAX): LLVM's
    optimisation off (a fifth less time for the GPU benchmark's smoke, whose programs run once), and compiled
    programs kept in one cache for the whole run, so that a program compiled by one test is read back by the next
    (the same smoke again: half the time). What these tests run is checked, never how fast it runs."""
    cache = made_once(tmp_path_factory, "jax-cache", str)
    return {"XLA_FLAGS": "--xla_backend_optimization_level=0", "JAX_COMPILATION_CACHE_DIR": cache}


@pytest.fixture(scope="session")
def synthetic_archive(tmp_path_factory) -> Path:
    """A Kaggle-layout tree: <root>/chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/."""
    def make(root: Path) -> str:
        synthesize(root, per_class=TINY_PER_CLASS, seed=7, min_size=64, max_size=96)
        return str(root)

    return Path(made_once(tmp_path_factory, "synthetic", make))


@pytest.fixture(scope="session")
def raw_dataset(synthetic_archive, tmp_path_factory) -> Path:
    def make(folder: Path) -> str:
        ingest(str(synthetic_archive), folder / "raw")
        return str(folder / "raw")

    return Path(made_once(tmp_path_factory, "raw", make))


@pytest.fixture(scope="session")
def processed_dataset(raw_dataset, tmp_path_factory) -> Path:
    def make(folder: Path) -> str:
        preprocess(raw_dataset, folder / "processed", Settings(image_size=TINY_IMAGE_SIZE, val_fraction=0.2, seed=3))
        return str(folder / "processed")

    return Path(made_once(tmp_path_factory, "processed", make))


KILLED_AFTER_EPOCH = """
import os, signal, sys
from cxr.cli import main
from cxr.training import train

after, record = int(sys.argv[1]), train.ResumableTraining.on_epoch_end

def on_epoch_end(self, epoch, logs=None):
    record(self, epoch, logs)  # the checkpoint of this epoch is on disk
    if epoch + 1 == after:
        os.kill(os.getpid(), signal.SIGKILL)

train.ResumableTraining.on_epoch_end = on_epoch_end
sys.exit(main(sys.argv[2:]))
"""


def train_killed_after_epoch(args: list[str], epoch: int) -> subprocess.CompletedProcess:
    """`cxr ARGS` (a training) as a real process that is killed with SIGKILL right after `epoch` is checkpointed:
    a preempted pod at a known point, so that no test depends on how fast the machine is."""
    return subprocess.run([sys.executable, "-c", KILLED_AFTER_EPOCH, str(epoch), *args],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)


def huge_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A PNG whose header says width x height: what a decompression bomb looks like before it is decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b""))


@pytest.fixture(scope="session")
def film_formats(tmp_path_factory) -> dict[str, Path]:
    """One small film in each format a user may send, by PIL's format name: JPEG and PNG are read, the rest are
    refused (cxr.data.images.FORMATS)."""
    import numpy as np
    from PIL import Image

    folder = tmp_path_factory.mktemp("formats")
    film = Image.fromarray(np.tile(np.linspace(20, 230, 80), (64, 1)).astype(np.uint8), mode="L")
    written = {}
    for kind, suffix in (("JPEG", "jpeg"), ("PNG", "png"), ("GIF", "gif"), ("BMP", "bmp"), ("TIFF", "tiff"),
                         ("WEBP", "webp")):
        written[kind] = folder / f"film.{suffix}"
        film.save(written[kind], format=kind)
    return written


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def gcs_emulator():
    """A local GCS API (gcp-storage-emulator) that the real google-cloud-storage client talks to."""
    port = free_port()
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("gcp-storage-emulator")), "start", "--host", "127.0.0.1",
         "--port", str(port), "--in-memory"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        process.kill()
        raise RuntimeError("gcp-storage-emulator did not start")
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=10)
    if previous is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = previous


@pytest.fixture
def bucket(gcs_emulator, request):
    """A fresh bucket on the emulator, named after the test."""
    from cxr.data import gcs

    name = "b-" + request.node.name.lower().replace("_", "-")[:50]
    return gcs.client().create_bucket(name)


@pytest.fixture(scope="session")
def evaluated_results(processed_dataset, tmp_path_factory) -> dict[str, Path]:
    """Two backbones trained for one epoch at 32 px and evaluated: backbone name -> result folder."""
    from cxr.results.evaluate import evaluate
    from cxr.training.train import TrainSettings, train

    def make(root: Path) -> dict[str, str]:
        for name in ("MobileNet", "VGG16"):
            train(processed_dataset, root / f"{name}-model",
                  TrainSettings(name, epochs=1, image_size=32, weights="none"))
            evaluate(processed_dataset, root / f"{name}-model", root / name, samples=50)
        return {name: str(root / name) for name in ("MobileNet", "VGG16")}

    return {name: Path(folder) for name, folder in made_once(tmp_path_factory, "results", make).items()}


@pytest.fixture(scope="session")
def evaluated_mobilenet(evaluated_results, processed_dataset, tmp_path_factory) -> Path:
    """evaluated_results' MobileNet with its evaluation in the model folder itself, as a user may keep them:
    model.keras, preprocessing.json and metrics.json side by side (what `cxr predict` and `cxr export` read when
    no --result is given). A copy, so that the training folder the other tests use stays as `cxr train` left it."""
    from cxr.results.evaluate import evaluate

    def make(root: Path) -> str:
        folder = root / "MobileNet"
        shutil.copytree(evaluated_results["MobileNet"].parent / "MobileNet-model", folder)
        evaluate(processed_dataset, folder, folder, samples=20)
        return str(folder)

    return Path(made_once(tmp_path_factory, "evaluated-mobilenet", make))


@pytest.fixture(scope="session")
def tiny_training(processed_dataset, tmp_path_factory) -> tuple[Path, dict]:
    """TINY_TRAINING for two epochs, finished: its folder and the metrics train() returned. Tests that change the
    folder work on a copy."""
    from cxr.training.train import TrainSettings, train

    folder = tmp_path_factory.mktemp("tiny-training") / "run"
    return folder, train(processed_dataset, folder, TrainSettings(epochs=2, **TINY_TRAINING))
