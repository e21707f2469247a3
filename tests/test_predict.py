"""`cxr predict` on a real trained tiny model: the same probabilities as `cxr evaluate`, a row for every file."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr import files
from cxr.cli import main
from tests.conftest import TINY_IMAGE_SIZE


@pytest.fixture(scope="session")
def trained(evaluated_mobilenet):
    """MobileNet trained one epoch at 32 px and evaluated into the same folder, as `make demo` does not but a
    user may: model.keras, preprocessing.json and metrics.json side by side. The session's, shared with
    tests/test_export.py (tests/conftest.py)."""
    return evaluated_mobilenet


def test_train_records_the_preprocessing(trained):
    prep = json.loads((trained / files.PREPROCESSING).read_text())
    assert prep == {"processed_size": TINY_IMAGE_SIZE, "image_size": 32}


def test_predict_gives_evaluates_probabilities_for_the_test_films(trained, raw_dataset, tmp_path):
    evaluated = pd.read_csv(trained / files.PREDICTIONS)
    out = tmp_path / "predictions.csv"
    assert main(["predict", "--model", str(trained), "--out", str(out),
                 *(str(raw_dataset / source) for source in evaluated["source"])]) == 0
    predicted = pd.read_csv(out, keep_default_na=False)
    assert len(predicted) == len(evaluated) and (predicted["error"] == "").all()
    np.testing.assert_allclose(predicted["probability"], evaluated["probability"], atol=1e-4, rtol=0)
    threshold = json.loads((trained / files.METRICS).read_text())["thresholds"]["validation"]
    expected = np.where(evaluated["probability"] >= threshold, "PNEUMONIA", "NORMAL")
    # A film within 1e-4 of the threshold could flip; none does here, and the check would say so.
    assert (predicted["decision"] == expected).all()
    assert (predicted["threshold"] == threshold).all()


def test_unreadable_files_get_a_row_with_the_reason(trained, raw_dataset, tmp_path):
    good = sorted(raw_dataset.glob("test/PNEUMONIA/*.jpeg"))[0]
    truncated = tmp_path / "truncated.jpeg"
    truncated.write_bytes(good.read_bytes()[:200])
    empty = tmp_path / "empty.png"
    empty.touch()
    text = tmp_path / "notes.jpg"
    text.write_text("not a film")
    wide16 = tmp_path / "sixteen-bit.png"  # another size and mode: 16-bit, landscape
    Image.fromarray((np.arange(50 * 90).reshape(50, 90) * 7).astype(np.uint16)).save(wide16)
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (33, 71), (120, 40, 200, 255)).save(rgba)
    films = [good, truncated, empty, text, tmp_path / "missing.jpeg", wide16, rgba]
    out = tmp_path / "out.csv"
    assert main(["predict", "--model", str(trained), "--out", str(out), *map(str, films)]) == 0
    table = pd.read_csv(out, keep_default_na=False).set_index("file")
    assert list(table.index) == [str(f) for f in films]
    for readable in (good, wide16, rgba):
        row = table.loc[str(readable)]
        assert row["error"] == "" and 0 <= float(row["probability"]) <= 1 and row["decision"] in ("NORMAL", "PNEUMONIA")
    assert "corrupt" in table.loc[str(truncated), "error"]
    assert table.loc[str(empty), "error"] == "empty file"
    assert table.loc[str(text), "error"] == "not an image"
    assert "No such file" in table.loc[str(tmp_path / "missing.jpeg"), "error"]
    assert (table.loc[[str(truncated), str(empty), str(text)], "decision"] == "").all()


def test_an_existing_output_is_never_overwritten(trained, raw_dataset, tmp_path, capsys):
    out = tmp_path / "mine.csv"
    out.write_text("the user's own table\n")
    film = sorted(raw_dataset.glob("test/NORMAL/*.jpeg"))[0]
    assert main(["predict", "--model", str(trained), "--out", str(out), str(film)]) == 2
    assert out.read_text() == "the user's own table\n"
    assert f"{out} exists already" in capsys.readouterr().err


def test_without_a_threshold_predict_says_where_to_find_one(trained, raw_dataset, tmp_path, capsys):
    film = sorted(raw_dataset.glob("test/NORMAL/*.jpeg"))[0]
    assert main(["predict", "--model", str(trained), "--result", str(tmp_path), str(film)]) == 2
    assert "pass --result" in capsys.readouterr().err
    assert main(["predict", "--model", str(trained), "--threshold", "0.3", str(film)]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert table["threshold"].tolist() == [0.3]
