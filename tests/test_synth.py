import hashlib
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr.data.patients import identify
from cxr.data.synth import synthesize
from cxr.errors import UserError


def _digest(root) -> str:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return hashlib.sha256(b"".join(p.relative_to(root).as_posix().encode() + p.read_bytes() for p in files)).hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        synthesize(tmp_path / name, per_class=8, seed=seed, min_size=48, max_size=64)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")


def test_layout_names_proportions_and_patients_look_like_the_kaggle_archive(synthetic_archive):
    root = synthetic_archive / "chest_xray"
    assert sorted(p.relative_to(root).as_posix() for p in root.glob("*/*")) == [
        f"{split}/{c}" for split in ("test", "train", "val") for c in ("NORMAL", "PNEUMONIA")]
    train = {c: list((root / "train" / c).iterdir()) for c in ("NORMAL", "PNEUMONIA")}
    assert len(train["PNEUMONIA"]) == 3 * len(train["NORMAL"])
    identities = [identify(p.name) for files in train.values() for p in files]
    assert all(i.parsed for i in identities)
    assert {i.subtype for i in identities} == {"normal", "bacteria", "virus"}
    assert any(p.name.startswith("NORMAL2-IM-") for p in train["NORMAL"])
    images_per_patient = Counter(i.patient_id for i in identities)
    assert max(images_per_patient.values()) > 1 and min(images_per_patient.values()) == 1
    test_patients = {identify(p.name).patient_id for p in (root / "test").rglob("*.jpeg")}
    assert not test_patients & set(images_per_patient)  # independent patients, as Kermany et al. kept them


def test_films_are_jpegs_of_the_requested_heights_mostly_grayscale(tmp_path):
    synthesize(tmp_path, per_class=40, seed=1, min_size=70, max_size=90)
    modes = Counter()
    for path in (tmp_path / "chest_xray").rglob("*.jpeg"):
        with Image.open(path) as image:
            assert image.format == "JPEG" and 70 <= image.height <= 90
            modes[image.mode] += 1
    assert modes["L"] > 10 * modes["RGB"] > 0


def test_an_existing_archive_is_never_overwritten(tmp_path):
    synthesize(tmp_path, per_class=4, seed=1, min_size=40, max_size=40)
    with pytest.raises(UserError, match="already exists"):
        synthesize(tmp_path, per_class=4, seed=1, min_size=40, max_size=40)


@pytest.mark.parametrize(("per_class", "low", "high"), [(2, 64, 64), (8, 100, 50), (8, 8, 16)])
def test_bad_settings_are_refused(tmp_path, per_class, low, high):
    with pytest.raises(UserError):
        synthesize(tmp_path, per_class=per_class, seed=1, min_size=low, max_size=high)


def test_lesions_csv_boxes_every_opacity_in_the_written_films_pixels(synthetic_archive):
    root = synthetic_archive / "chest_xray"
    lesions = pd.read_csv(root / "lesions.csv")
    assert list(lesions.columns) == ["file", "width", "height", "x_min", "y_min", "x_max", "y_max"]
    films = {p.relative_to(root).as_posix() for p in root.rglob("*.jpeg")}
    pneumonia = {f for f in films if "/PNEUMONIA/" in f}
    assert set(lesions["file"]) == pneumonia  # every pneumonia film has a box, no normal film has one
    contrasts = []
    for row in lesions.itertuples():
        with Image.open(root / row.file) as image:
            pixels = np.asarray(image.convert("L"), dtype=float)
        assert (row.height, row.width) == pixels.shape
        assert 0 <= row.x_min < row.x_max <= row.width and 0 <= row.y_min < row.y_max <= row.height
        rows = slice(int(row.y_min), int(np.ceil(row.y_max)))
        inside = pixels[rows, int(row.x_min):int(np.ceil(row.x_max))].mean()
        # The same box mirrored onto the other side of the chest: lung without the patch (or spine).
        mirrored = pixels[rows, row.width - int(np.ceil(row.x_max)):row.width - int(row.x_min)].mean()
        contrasts.append(inside - mirrored)
    # The patch adds 60-90 grey levels at its centre; a box in the wrong place or scale would not see it.
    assert np.median(contrasts) > 20
    assert np.mean(np.array(contrasts) > 0) > 0.9
