"""`cxr export`: the SavedModel, loaded with tf.saved_model.load as TF Serving loads it, serves encoded films."""

from __future__ import annotations

import base64
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr import files
from cxr.cli import main
from cxr.errors import UserError
from tests.conftest import huge_png


@pytest.fixture(scope="session")
def trained(evaluated_mobilenet):
    """MobileNet trained one epoch at 32 px, evaluated into the same folder: the session's, shared with
    tests/test_predict.py (tests/conftest.py)."""
    return evaluated_mobilenet


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("serving") / "pneumonia"
    assert main(["export", "--model", str(trained), "--out", str(out)]) == 0
    return out


def _films(raw_dataset, tmp_path) -> list:
    """Test films as they come (JPEG, mostly grayscale, some RGB) plus other modes a user may send."""
    films = sorted(raw_dataset.glob("test/*/*.jpeg"))
    with Image.open(films[0]) as image:
        gray = np.asarray(image.convert("L"))
    rgb = tmp_path / "rgb.png"
    Image.fromarray(gray).convert("RGB").save(rgb)
    sixteen = tmp_path / "sixteen-bit.png"  # 12 bits used of 16, as X-ray detectors write them
    Image.fromarray(gray.astype(np.uint16) * 16 + 100).save(sixteen)
    return [*films, rgb, sixteen]


def test_the_signature_takes_encoded_films_and_agrees_with_predict(trained, exported, raw_dataset, tmp_path):
    import tensorflow as tf

    films = _films(raw_dataset, tmp_path)
    cmyk = tmp_path / "cmyk.jpeg"  # decoded through RGB, two grey levels from PIL's pixels at most: not in _films
    with Image.open(films[0]) as image:
        image.convert("CMYK").save(cmyk)
    films.append(cmyk)
    loaded = tf.saved_model.load(str(exported / "1"))
    serve = loaded.signatures["serving_default"]
    assert list(serve.structured_input_signature[1]) == ["image_bytes"]
    outputs = serve(image_bytes=tf.constant([f.read_bytes() for f in films]))
    assert set(outputs) == {"probability", "decision", "error"}
    assert [e.decode() for e in outputs["error"].numpy()] == [""] * len(films)

    predicted = tmp_path / "predicted.csv"
    assert main(["predict", "--model", str(trained), "--out", str(predicted), *map(str, films)]) == 0
    expected = pd.read_csv(predicted)
    probability = outputs["probability"].numpy()
    assert probability.shape == (len(films),) and probability.dtype == np.float32
    difference = np.abs(probability - expected["probability"].to_numpy())
    print(f"SavedModel vs cxr predict: max |difference| {difference.max():.5f} over {len(films)} films")
    assert difference.max() < 0.02, difference.max()
    threshold = json.loads((trained / files.METRICS).read_text())["thresholds"]["validation"]
    decisions = [d.decode() for d in outputs["decision"].numpy()]
    # In float64, as predict and evaluate decide: the validation threshold may sit one float64 step above a
    # probability ("no film reaches it"), which a float32 `probability >= threshold` rounds away.
    assert decisions == ["PNEUMONIA" if float(p) >= threshold else "NORMAL" for p in probability]


def test_the_graphs_preprocessing_sees_the_pixels_training_saw(trained, raw_dataset, tmp_path):
    """Pixel by pixel against `cxr predict`'s path (PIL decode and resize, then the reader's resize): a check the
    probabilities of a barely trained model could not make."""
    import tensorflow as tf

    from cxr.serving.export import film_in_graph
    from cxr.serving.trained import read_film, read_preprocessing

    prep = read_preprocessing(trained)
    for film in _films(raw_dataset, tmp_path):
        in_graph = film_in_graph(tf.constant(film.read_bytes()), prep).numpy().astype(float)
        expected = read_film(film, prep).astype(float)
        assert in_graph.shape == expected.shape == (prep.image_size, prep.image_size, 1)
        # Same DCT scale and IDCT, PIL's two-pass resize repeated: at most one grey level on a few pixels (PIL's
        # fixed-point weights). TensorFlow's default fast IDCT, one-pass resize or 16-bit conversion fail this.
        difference = np.abs(in_graph - expected)
        assert difference.max() <= 1 and difference.mean() < 0.1, (film.name, difference.max(), difference.mean())


def test_a_tf_serving_rest_body_feeds_the_signature(exported, raw_dataset):
    """The README's curl body, {"instances": [{"b64": ...}]}, decoded as TF Serving decodes it (base64 of the
    file's bytes into one string per instance); no TF Serving binary runs here."""
    import tensorflow as tf

    film = sorted(raw_dataset.glob("test/PNEUMONIA/*.jpeg"))[0]
    body = json.loads(json.dumps({"instances": [{"b64": base64.b64encode(film.read_bytes()).decode()}]}))
    strings = [base64.b64decode(instance["b64"]) for instance in body["instances"]]
    serve = tf.saved_model.load(str(exported / "1")).signatures["serving_default"]
    assert serve(image_bytes=tf.constant(strings))["probability"].shape == (1,)


def test_export_refuses_a_folder_in_use(trained, tmp_path):
    from cxr.serving.export import export

    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(UserError, match="not empty"):
        export(trained, tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep"


def test_best_candidate_is_chosen_on_validation(tmp_path):
    from cxr.results.metrics import json_safe, summarize
    from cxr.serving.export import best_candidate

    # A whole metrics.json (cxr.artifacts checks every part), its validation scores then set by hand.
    films = pd.DataFrame({"patient_id": list("abcd"), "label": [0, 1, 0, 1], "probability": [0.2, 0.7, 0.4, 0.9]})
    metrics = json_safe({"backbone": "MobileNet", **summarize(films, films, samples=5)})
    candidates = []
    for name, auc, loss in (("a", 0.90, 0.3), ("b", 0.95, 0.5), ("c", 0.95, 0.4), ("d", None, 0.1)):
        (tmp_path / name).mkdir()
        (tmp_path / name / files.METRICS).write_text(json.dumps(
            {**metrics, "validation": {**metrics["validation"], "roc_auc": auc, "loss": loss}}))
        candidates.append((tmp_path / f"{name}-model", tmp_path / name))
    assert best_candidate(candidates) == (tmp_path / "c-model", tmp_path / "c")


def test_export_refuses_an_out_inside_the_model_folder(trained, capsys):
    before = sorted(p.name for p in trained.iterdir())
    for out in (trained, trained / "serving"):
        assert main(["export", "--model", str(trained), "--out", str(out)]) == 2
        error = capsys.readouterr().err.strip()
        assert error == (f"cxr export: error: --out {out} is inside --model {trained}, a folder another cxr command "
                         "owns; export to a folder of its own")
    assert sorted(p.name for p in trained.iterdir()) == before


def test_the_savedmodel_decides_in_float64(trained, exported, raw_dataset, tmp_path):
    """A threshold one float64 step above a film's probability: NORMAL, as predict and evaluate decide; a float32
    comparison would round the step away and answer PNEUMONIA."""
    import tensorflow as tf

    film = tf.constant([sorted(raw_dataset.glob("test/PNEUMONIA/*.jpeg"))[0].read_bytes()])
    probability = float(tf.saved_model.load(str(exported / "1")).signatures["serving_default"](
        image_bytes=film)["probability"].numpy()[0])
    above = float(np.nextafter(probability, np.inf))
    out = tmp_path / "above"
    assert main(["export", "--model", str(trained), "--threshold", repr(above), "--out", str(out)]) == 0
    outputs = tf.saved_model.load(str(out / "1")).signatures["serving_default"](image_bytes=film)
    assert float(outputs["probability"].numpy()[0]) == probability
    assert outputs["decision"].numpy().tolist() == [b"NORMAL"]


def test_a_bad_film_gets_its_reason_and_the_others_are_answered(exported, raw_dataset):
    """One request with films `cxr predict` refuses among good ones: each bad one gets its own reason, NaN and no
    decision; the good ones get what they get alone. The 20000 x 20000 PNG is refused from its header (decoded,
    it would take 400 MB)."""
    import tensorflow as tf

    serve = tf.saved_model.load(str(exported / "1")).signatures["serving_default"]
    good = [f.read_bytes() for f in sorted(raw_dataset.glob("test/*/*.jpeg"))[:2]]
    bad = {b"": "empty file", b"not an image at all": "not a JPEG or PNG image",
           good[0][:300]: "corrupt image", huge_png(): "too large to decode safely",
           b"\x89PNG\r\n\x1a\n": "corrupt image"}
    outputs = serve(image_bytes=tf.constant([good[0], *bad, good[1]]))
    errors = [e.decode() for e in outputs["error"].numpy()]
    assert errors[0] == errors[-1] == ""
    for error, expected in zip(errors[1:-1], bad.values(), strict=True):
        assert error.startswith(expected), (error, expected)
    probability, decision = outputs["probability"].numpy(), [d.decode() for d in outputs["decision"].numpy()]
    assert np.isnan(probability[1:-1]).all() and decision[1:-1] == [""] * len(bad)
    alone = serve(image_bytes=tf.constant(good))
    np.testing.assert_allclose(probability[[0, -1]], alone["probability"].numpy(), atol=1e-6)
    assert [decision[0], decision[-1]] == [d.decode() for d in alone["decision"].numpy()]


def test_an_empty_batch_gets_empty_outputs_and_a_batch_of_bad_films_their_reasons(exported):
    import tensorflow as tf

    serve = tf.saved_model.load(str(exported / "1")).signatures["serving_default"]
    outputs = serve(image_bytes=tf.constant([], tf.string))
    assert {name: tensor.shape for name, tensor in outputs.items()} == {"probability": (0,), "decision": (0,),
                                                                         "error": (0,)}
    outputs = serve(image_bytes=tf.constant([b"junk", b""]))  # no film to give the model
    assert [e.decode() for e in outputs["error"].numpy()] == ["not a JPEG or PNG image", "empty file"]
    assert np.isnan(outputs["probability"].numpy()).all()


def test_the_savedmodel_reads_and_refuses_the_formats_predict_reads_and_refuses(exported, film_formats):
    """The same formats as `cxr predict` and `cxr serve` (tests/test_serve.py), refused with the same reason."""
    import tensorflow as tf

    from cxr.data.images import NOT_JPEG_OR_PNG

    serve = tf.saved_model.load(str(exported / "1")).signatures["serving_default"]
    outputs = serve(image_bytes=tf.constant([path.read_bytes() for path in film_formats.values()]))
    errors = dict(zip(film_formats, (e.decode() for e in outputs["error"].numpy()), strict=True))
    assert errors == {kind: "" if kind in ("JPEG", "PNG") else NOT_JPEG_OR_PNG for kind in film_formats}
