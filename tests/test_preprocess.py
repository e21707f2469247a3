import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr.cli import main
from cxr.data.preprocess import Settings, preprocess
from cxr.errors import UserError
from tests.conftest import TINY_IMAGE_SIZE


def test_manifest_has_one_row_per_kept_image_with_the_named_columns(processed_dataset, raw_dataset):
    manifest = pd.read_csv(processed_dataset / "manifest.csv")
    assert {"split", "label", "class_name", "patient_id", "source"} <= set(manifest.columns)
    assert len(manifest) == sum(1 for _ in raw_dataset.rglob("*.jpeg"))
    assert (manifest["label"] == (manifest["class_name"] == "PNEUMONIA").astype(int)).all()


def test_patient_split_keeps_official_test_and_leaks_no_patient(processed_dataset):
    manifest = pd.read_csv(processed_dataset / "manifest.csv")
    stats = json.loads((processed_dataset / "stats.json").read_text())
    assert (manifest[manifest["official_split"] == "test"]["split"] == "test").all()
    assert set(manifest[manifest["official_split"] != "test"]["split"]) == {"train", "val"}
    assert manifest.groupby("patient_id")["split"].nunique().max() == 1
    assert stats["patients_in_several_splits"] == []
    for split, counts in stats["counts"].items():
        assert counts["NORMAL"] > 0 and counts["PNEUMONIA"] > 0, split


def test_tfrecord_shards_are_written_per_split(processed_dataset):
    for split in ("train", "val", "test"):
        assert list(processed_dataset.glob(f"{split}-00000-of-*.tfrecord"))


def test_official_split_keeps_the_folders(raw_dataset, tmp_path):
    stats = preprocess(raw_dataset, tmp_path / "out", Settings(image_size=32, split="official"))
    expected = {split: {c: len(list((raw_dataset / split / c).iterdir())) for c in ("NORMAL", "PNEUMONIA")}
                for split in ("train", "val", "test")}
    assert stats["counts"] == expected


def _broken_copy(raw_dataset, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(raw_dataset, raw)
    normal = raw / "train" / "NORMAL"
    good = next(normal.glob("*.jpeg")).read_bytes()
    (normal / "IM-9001-0001.jpeg").write_bytes(b"")
    (normal / "IM-9002-0001.jpeg").write_bytes(good[: len(good) // 3])
    (normal / "IM-9003-0001.jpeg").write_text("not an image")
    buffer = io.BytesIO()
    Image.fromarray(np.full((50, 60, 4), 200, np.uint8), mode="RGBA").save(buffer, format="PNG")
    (normal / "IM-9004-0001.jpeg").write_bytes(buffer.getvalue())  # a PNG named .jpeg: kept
    return raw


def test_broken_files_are_skipped_and_reported_never_fatal(raw_dataset, tmp_path):
    stats = preprocess(_broken_copy(raw_dataset, tmp_path), tmp_path / "out", Settings(image_size=32))
    reasons = {item["file"]: item["reason"] for item in stats["skipped"]}
    assert set(reasons) == {f"train/NORMAL/IM-900{i}-0001.jpeg" for i in (1, 2, 3)}
    assert reasons["train/NORMAL/IM-9001-0001.jpeg"] == "empty file"
    assert reasons["train/NORMAL/IM-9003-0001.jpeg"] == "not a JPEG or PNG image"
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv")
    assert "train/NORMAL/IM-9004-0001.jpeg" in set(manifest["source"])
    assert not manifest["source"].isin(reasons).any()


def test_a_missing_class_folder_stops_with_one_line_naming_it(raw_dataset, tmp_path, capsys):
    raw = tmp_path / "raw"
    shutil.copytree(raw_dataset, raw)
    shutil.rmtree(raw / "val" / "PNEUMONIA")
    assert main(["preprocess", "--raw", str(raw), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and str(raw / "val" / "PNEUMONIA") in error


def test_a_tree_with_no_usable_image_stops(tmp_path):
    for split in ("train", "val", "test"):
        for class_name in ("NORMAL", "PNEUMONIA"):
            folder = tmp_path / "raw" / split / class_name
            folder.mkdir(parents=True)
            (folder / "IM-0001-0001.jpeg").write_text("junk")
    with pytest.raises(UserError, match="no usable image"):
        preprocess(tmp_path / "raw", tmp_path / "out", Settings(image_size=32, split="official"))


def test_same_input_same_output(raw_dataset, tmp_path):
    for name in ("a", "b"):
        preprocess(raw_dataset, tmp_path / name, Settings(image_size=TINY_IMAGE_SIZE, val_fraction=0.2, seed=3),
                   workers=1 if name == "a" else 2)
    for path in (tmp_path / "a").iterdir():
        if path.name != "stats.json":
            assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes(), path.name
