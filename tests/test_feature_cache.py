"""The frozen regime's feature cache on its own (cxr.training.features): reuse, atomic publishing, checks, locking.
The extraction here writes small numpy arrays, so these run in seconds; tests/test_regimes.py runs real backbones."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr import settings
from cxr.errors import UserError
from cxr.training import features as fc

ROOT = Path(__file__).resolve().parents[1]
KEY = fc.FeatureKey("MobileNet", 32, "none", "float32", "d" * 64)


def fake_extract(calls: list, value: float = 1.0):
    """An extraction that writes what a real one writes, with known values, and records that it ran."""

    def extract(folder: Path) -> None:
        calls.append(folder)
        for index, split in enumerate(settings.SPLITS):
            films = 3 + index
            np.save(folder / fc.features_file(split), np.full((films, 1, 1, 4), value, dtype="float32"))
            pd.DataFrame({"patient_id": [f"p{i}" for i in range(films)],
                          "source": [f"{split}/NORMAL/f{i}.jpeg" for i in range(films)],
                          "label": [i % 2 for i in range(films)]}).to_csv(folder / fc.films_file(split), index=False)
        (folder / fc.BACKBONE_WEIGHTS).write_bytes(b"weights")

    return extract


def _stamps(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_built_once_then_reused_unchanged(tmp_path, capsys):
    calls = []
    first = fc.open_cache(tmp_path, KEY, fake_extract(calls))
    assert not first.reused and first.seconds > 0 and len(calls) == 1
    assert first.folder.name == KEY.folder_name() and first.folder.name.startswith("mobilenet-32px-")
    stamps = _stamps(first.folder)
    second = fc.open_cache(tmp_path, KEY, fake_extract(calls))
    assert second.reused and second.seconds == 0 and len(calls) == 1
    assert _stamps(second.folder) == stamps  # not rewritten: same inodes, same modification times
    assert f"reusing cached features {first.folder}" in capsys.readouterr().err
    assert second.features("val").shape == (4, 1, 1, 4) and list(second.films("test")["patient_id"])[:2] == ["p0",
                                                                                                          "p1"]
    # Only the cache and its lock: the partial folder was renamed into place.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.folder.name, first.folder.name + ".lock"])


@pytest.mark.parametrize("change", ["image_size", "weights", "precision", "dataset", "backbone"])
def test_another_key_is_another_cache(tmp_path, change):
    other = {"image_size": 64, "weights": "imagenet", "precision": "float16", "dataset": "e" * 64,
             "backbone": "VGG16"}[change]
    calls = []
    first = fc.open_cache(tmp_path, KEY, fake_extract(calls))
    second = fc.open_cache(tmp_path, fc.FeatureKey(**{**KEY.__dict__, change: other}), fake_extract(calls))
    assert second.folder != first.folder and not second.reused and len(calls) == 2


def test_a_cache_recording_another_key_is_never_read(tmp_path, capsys):
    cache = fc.open_cache(tmp_path, KEY, fake_extract([]))
    meta = json.loads((cache.folder / fc.META).read_text())
    meta["key"]["dataset"] = "f" * 64  # as if another dataset's cache had this folder's name
    (cache.folder / fc.META).write_text(json.dumps(meta))
    assert fc.problem(cache.folder, KEY) == "it holds another key"
    calls = []
    rebuilt = fc.open_cache(tmp_path, KEY, fake_extract(calls, value=2.0))
    assert len(calls) == 1 and not rebuilt.reused and (rebuilt.features("train") == 2.0).all()
    assert "is damaged (it holds another key); rebuilding it" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "meta"])
def test_a_damaged_cache_is_rebuilt_never_trusted(tmp_path, damage, capsys):
    cache = fc.open_cache(tmp_path, KEY, fake_extract([]))
    target = cache.folder / fc.features_file("train")
    data = bytearray(target.read_bytes())
    if damage == "flip":
        data[-1] ^= 0xFF  # same size, another value: only the SHA-256 tells
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(bytes(data[:-8]))
    elif damage == "delete":
        target.unlink()
    else:
        (cache.folder / fc.META).write_text("{not json")
    assert fc.problem(cache.folder, KEY) is not None
    calls = []
    rebuilt = fc.open_cache(tmp_path, KEY, fake_extract(calls, value=3.0))
    assert len(calls) == 1 and fc.problem(rebuilt.folder, KEY) is None and (rebuilt.features("train") == 3.0).all()
    assert "rebuilding it" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.damaged-*"))


KILLED_EXTRACTION = """
import os, signal, sys
from pathlib import Path
from tests.test_feature_cache import KEY
from cxr.training import features as fc

def killed(folder):
    (folder / fc.features_file("train")).write_bytes(b"half written")
    os.kill(os.getpid(), signal.SIGKILL)

fc.open_cache(Path(sys.argv[1]), KEY, killed)
"""


def test_what_a_killed_extraction_left_is_cleared_and_rebuilt(tmp_path):
    killed = subprocess.run([sys.executable, "-c", KILLED_EXTRACTION, str(tmp_path)], cwd=ROOT, capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    (partial,) = tmp_path.glob(f"{KEY.folder_name()}.partial-*")
    assert fc.problem(tmp_path / KEY.folder_name(), KEY) == "missing"
    calls = []
    cache = fc.open_cache(tmp_path, KEY, fake_extract(calls))
    assert len(calls) == 1 and not partial.exists() and fc.problem(cache.folder, KEY) is None


def test_a_users_folder_named_like_a_partial_one_is_never_deleted(tmp_path):
    mine = tmp_path / f"{KEY.folder_name()}.partial-999"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    cache = fc.open_cache(tmp_path, KEY, fake_extract([]))
    assert fc.problem(cache.folder, KEY) is None and (mine / "notes.txt").read_text() == "mine"


def test_a_cache_that_lost_its_meta_json_is_rebuilt(tmp_path, capsys):
    first = fc.open_cache(tmp_path, KEY, fake_extract([]))
    (first.folder / fc.META).unlink()
    calls = []
    again = fc.open_cache(tmp_path, KEY, fake_extract(calls))
    assert len(calls) == 1 and fc.problem(again.folder, KEY) is None
    assert f"the feature cache {first.folder} is damaged (no meta.json); rebuilding it" in capsys.readouterr().err


def test_an_extraction_that_fails_leaves_nothing(tmp_path):
    def failing(folder: Path) -> None:
        (folder / "train.npy").write_bytes(b"half")
        raise RuntimeError("out of disk")

    with pytest.raises(RuntimeError, match="out of disk"):
        fc.open_cache(tmp_path, KEY, failing)
    assert [p.name for p in tmp_path.iterdir()] == [KEY.folder_name() + ".lock"]


def test_a_folder_of_that_name_not_written_by_cxr_is_left_alone(tmp_path):
    foreign = tmp_path / KEY.folder_name()
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="is not a feature cache cxr wrote"):
        fc.open_cache(tmp_path, KEY, fake_extract([]))
    assert (foreign / "notes.txt").read_text() == "mine"


def test_a_features_root_that_is_a_file_is_one_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="--features .*file: is a file"):
        fc.open_cache(tmp_path / "file", KEY, fake_extract([]))


HELD_EXTRACTION = """
import sys, time
from pathlib import Path
from tests.test_feature_cache import KEY, fake_extract
from cxr.training import features as fc
log, go = Path(sys.argv[2]), Path(sys.argv[3])

def held(folder):
    with log.open("a") as handle:
        handle.write("extracted\\n")
    while not go.exists():  # the lock is held until the test says go
        time.sleep(0.02)
    fake_extract([])(folder)

cache = fc.open_cache(Path(sys.argv[1]), KEY, held)
print("reused" if cache.reused else "built")
"""


def test_two_trainings_filling_one_cache_do_not_race(tmp_path):
    """Two real processes: the first holds the lock while it extracts, and goes on only once the second has
    said it waits; the second then reuses the first one's work. The order is forced, not left to the scheduler."""
    log, go = tmp_path / "log", tmp_path / "go"
    command = [sys.executable, "-c", HELD_EXTRACTION, str(tmp_path / "features"), str(log), str(go)]
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not log.is_file() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert log.is_file(), first.communicate(timeout=60)
    second = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    said = ""
    while "waiting for another training" not in said and (line := second.stderr.readline()):  # blocks meanwhile
        said += line
    assert "waiting for another training to finish extracting" in said, said
    go.touch()
    out, _ = first.communicate(timeout=120)
    second_out, second_err = second.communicate(timeout=120)
    assert first.returncode == 0 and second.returncode == 0, second_err
    assert out.strip() == "built" and second_out.strip() == "reused"
    assert log.read_text() == "extracted\n"  # once


def test_the_dataset_fingerprint_follows_the_pixels(processed_dataset, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(processed_dataset, copy)
    assert fc.dataset_fingerprint(copy) == fc.dataset_fingerprint(processed_dataset)  # the path is not part of it
    shard = sorted(copy.glob("train-*.tfrecord"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 1
    shard.write_bytes(bytes(data))
    assert fc.dataset_fingerprint(copy) != fc.dataset_fingerprint(processed_dataset)


def test_weights_are_keyed_by_content(tmp_path):
    first, second = tmp_path / "a.weights.h5", tmp_path / "b.weights.h5"
    first.write_bytes(b"same")
    second.write_bytes(b"same")
    assert fc.weights_id(str(first), "VGG16", 32) == fc.weights_id(str(second), "VGG16", 32) != \
        fc.weights_id("none", "VGG16", 32)
    assert fc.weights_id("ImageNet", "VGG16", 32) == fc.weights_id("pretrained", "VGG16", 32) == "imagenet"
    with pytest.raises(UserError, match="--weights /nope"):
        fc.weights_id("/nope", "VGG16", 32)
