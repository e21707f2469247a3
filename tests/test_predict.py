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
    assert table.loc[str(text), "error"] == "not a JPEG or PNG image"
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


def test_a_folder_predicts_its_films_recursively_in_a_stable_order(trained, raw_dataset, tmp_path):
    sources = sorted(raw_dataset.glob("test/*/*.jpeg"))[:4]
    folder = tmp_path / "films"
    layout = {"b.jpeg": sources[0], "a/z.JPG": sources[1], "a/y.png": sources[2], "c/d/x.jpeg": sources[3]}
    for name, source in layout.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(source.read_bytes())
    (folder / "notes.txt").write_text("not a film")  # not a film suffix: left out
    (folder / "._b.jpeg").write_bytes(b"\x00\x05\x16\x07")  # macOS debris: hidden, left out
    (folder / "loop").symlink_to(folder, target_is_directory=True)  # never followed
    out = tmp_path / "folder.csv"
    assert main(["predict", "--model", str(trained), "--out", str(out), str(folder)]) == 0
    table = pd.read_csv(out, keep_default_na=False)
    order = ["a/y.png", "a/z.JPG", "b.jpeg", "c/d/x.jpeg"]  # by path inside the folder
    assert table["file"].tolist() == [str(folder / name) for name in order]
    assert (table["error"] == "").all()
    one_by_one = tmp_path / "files.csv"
    assert main(["predict", "--model", str(trained), "--out", str(one_by_one),
                 *(str(folder / name) for name in order)]) == 0
    np.testing.assert_allclose(table["probability"], pd.read_csv(one_by_one)["probability"], atol=1e-6, rtol=0)


def test_nothing_predictable_is_one_line_and_no_output(trained, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no films here")
    unreadable = tmp_path / "broken.jpeg"
    unreadable.write_bytes(b"not a jpeg")
    cases = {
        str(empty): f"{empty} holds no film",
        str(tmp_path / "*.jpeg"): "nothing to predict: none of the 1 film(s) can be read",  # a glob that matched none
        str(unreadable): "broken.jpeg: not a JPEG or PNG image",
    }
    for argument, message in cases.items():
        out = tmp_path / "out.csv"
        assert main(["predict", "--model", str(trained), "--out", str(out), argument]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("cxr predict: error: ") and message in error and "\n" not in error, error
        assert not out.exists()


@pytest.mark.parametrize("size", ["0", "-1", "100000"])
def test_a_batch_size_out_of_range_is_one_line_before_any_work(tmp_path, capsys, size):
    # --model names no folder at all: the batch size is refused before anything is read.
    assert main(["predict", "--model", str(tmp_path / "no-model"), "--batch-size", size, "film.jpeg"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"cxr predict: error: --batch-size must be between 1 and 1024, got {size}")


def test_the_decision_at_and_next_to_a_probability(trained, raw_dataset, tmp_path):
    """PNEUMONIA when P >= threshold, in float64, as evaluate counts: at P itself, one float64 step below and
    above (a step float32 cannot tell from P)."""
    from cxr.results.metrics import threshold_metrics
    from cxr.serving.trained import decide

    film = str(sorted(raw_dataset.glob("test/PNEUMONIA/*.jpeg"))[0])
    out = tmp_path / "p.csv"
    assert main(["predict", "--model", str(trained), "--threshold", "0.5", "--out", str(out), film]) == 0
    # round_trip: pandas' default parser may land one float64 step off the value written
    probability = float(pd.read_csv(out, float_precision="round_trip")["probability"].iloc[0])
    below, above = float(np.nextafter(probability, -np.inf)), float(np.nextafter(probability, np.inf))
    assert np.float32(above) == np.float32(probability)
    for threshold, expected in ((probability, "PNEUMONIA"), (below, "PNEUMONIA"), (above, "NORMAL")):
        out = tmp_path / f"{threshold!r}.csv"
        assert main(["predict", "--model", str(trained), "--threshold", repr(threshold), "--out", str(out), film]) == 0
        assert pd.read_csv(out)["decision"].tolist() == [expected], threshold
        # evaluate's count of a positive film at that threshold: sensitivity 1 exactly when predict says PNEUMONIA
        assert threshold_metrics(np.array([1]), np.array([probability]), threshold)["sensitivity"] == (
            expected == "PNEUMONIA")
        assert decide(np.array([probability], np.float32), threshold) == [expected]


def test_predict_writes_no_csv_into_a_folder_a_command_owns(trained, raw_dataset, capsys):
    film = str(sorted(raw_dataset.glob("test/NORMAL/*.jpeg"))[0])
    for out in (trained / "predictions-new.csv", trained / "checkpoint" / "p.csv"):
        assert main(["predict", "--model", str(trained), "--out", str(out), film]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith(f"cxr predict: error: --out {out} is inside {trained.resolve()}") and (
            "`cxr train`" in error and "write the CSV elsewhere" in error) and "\n" not in error, error
        assert not out.exists()
