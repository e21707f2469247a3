"""The standard probes (`cxr train --head linear|knn`): the pooling layer on CNN maps and ViT tokens, the probes
fitted by scikit-learn and carried into Keras layers, the plan's heads, and a frozen MobileNet whose two probes read
one feature cache and go through evaluate, predict, explain and export."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from cxr import files, settings
from cxr.cli import main
from cxr.errors import UserError
from cxr.training.heads import FeaturePooling, NearestNeighbours, pool
from cxr.training.plan import plan_runs
from cxr.training.probes import fit_knn, fit_linear
from cxr.training.train import TrainSettings, train
from tests.conftest import made_once

PROBE = dict(backbone="mobilenet", image_size=32, weights="none", batch_size=16, regime="frozen")


def _features(films: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features whose first column carries the label, the rest noise; 3 PNEUMONIA to 1 NORMAL, as the archive."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(films) < 0.75).astype("int64")
    features = rng.normal(size=(films, width)).astype("float32")
    features[:, 0] += 1.5 * labels
    return features, labels


def test_pooling_averages_a_cnn_map_and_joins_a_vits_class_token_with_its_mean_patch_token():
    maps = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype("float32")
    np.testing.assert_allclose(np.asarray(FeaturePooling()(maps)), maps.mean(axis=(1, 2)), atol=1e-6)
    tokens = np.random.default_rng(1).normal(size=(2, 7, 6)).astype("float32")
    expected = np.concatenate([tokens[:, 0], tokens[:, 1:].mean(axis=1)], axis=1)
    np.testing.assert_allclose(np.asarray(FeaturePooling()(tokens)), expected, atol=1e-6)
    assert FeaturePooling().compute_output_shape((None, 7, 6)) == (None, 12)
    np.testing.assert_allclose(pool(tokens), expected, atol=1e-6)  # the numpy path the probes are fitted on
    with pytest.raises(ValueError, match="got shape"):
        FeaturePooling()(np.zeros((2, 3), dtype="float32"))


def test_pooling_and_knn_layers_survive_saving(tmp_path):
    inputs = keras.Input((5, 4))
    outputs = NearestNeighbours(6, 3, name="pneumonia")(FeaturePooling(name="pooling")(inputs))
    model = keras.Model(inputs, outputs)
    references = np.random.default_rng(2).normal(size=(6, 8)).astype("float32")
    model.get_layer("pneumonia").set_weights([references, np.array([1, 0, 1, 1, 0, 0], dtype="float32")])
    model.save(tmp_path / "probe.keras")
    loaded = keras.saving.load_model(tmp_path / "probe.keras")
    tokens = np.random.default_rng(3).normal(size=(3, 5, 4)).astype("float32")
    np.testing.assert_allclose(np.asarray(loaded(tokens)), np.asarray(model(tokens)), atol=1e-6)


def test_the_linear_probe_is_scikit_learns_logistic_regression_folded_into_one_dense_layer():
    train_x, train_y = _features(300, 12, 4)
    val_x, val_y = _features(100, 12, 5)
    probe = fit_linear(train_x, train_y, val_x, val_y)
    assert probe.value in settings.LINEAR_C_GRID and len(probe.val_roc_auc) == len(settings.LINEAR_C_GRID)
    assert probe.val_roc_auc[f"{probe.value:g}"] == max(probe.val_roc_auc.values()) > 0.8
    scaler = StandardScaler().fit(train_x)
    reference = LogisticRegression(C=probe.value, class_weight="balanced", max_iter=2000)
    reference.fit(scaler.transform(train_x), train_y)
    kernel, bias = probe.weights
    dense = 1 / (1 + np.exp(-(val_x @ kernel[:, 0] + bias[0])))
    np.testing.assert_allclose(dense, reference.predict_proba(scaler.transform(val_x))[:, 1], atol=1e-4)


def test_the_knn_probe_votes_as_scikit_learns_cosine_neighbours_and_its_layer_agrees():
    train_x, train_y = _features(200, 10, 6)
    val_x, val_y = _features(80, 10, 7)
    probe = fit_knn(train_x, train_y, val_x, val_y)
    k = int(probe.value)
    assert k in settings.KNN_K_GRID and probe.val_roc_auc[str(k)] == max(probe.val_roc_auc.values())
    reference = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(train_x, train_y)
    expected = reference.predict_proba(val_x)[:, 1]
    assert roc_auc_score(val_y, expected) == pytest.approx(probe.val_roc_auc[str(k)])
    layer = NearestNeighbours(len(train_x), k)
    layer.build((None, train_x.shape[1]))
    layer.set_weights(probe.weights)
    np.testing.assert_allclose(np.asarray(layer(val_x))[:, 0], expected, atol=1e-6)


def test_a_probe_refuses_a_train_split_of_one_class():
    features, _ = _features(20, 4, 8)
    with pytest.raises(UserError, match="one class only"):
        fit_linear(features, np.ones(20), features, np.ones(20))


def test_the_plan_fans_out_heads_and_plans_knn_frozen_only():
    runs = plan_runs(["resnet50"], [1, 2], ["finetune", "frozen"], ["seed", "linear", "knn"])
    combos = {(r["regime"], r["head"]) for r in runs}
    assert combos == {("finetune", "seed"), ("finetune", "linear"), ("frozen", "seed"), ("frozen", "linear"),
                      ("frozen", "knn")}
    assert len(runs) == 10 and {r["backbone"] for r in runs} == {"ResNet50"}


@pytest.mark.parametrize("heads, message", [(["linear", "linear"], "listed more than once"),
                                            (["probe"], "unknown head 'probe'"), ([], "the list is empty")])
def test_the_plan_refuses_an_unknown_repeated_or_missing_head(heads, message):
    with pytest.raises(UserError, match=message):
        plan_runs(["resnet50"], [1], ["frozen"], heads)


def test_knn_alone_in_finetune_is_refused_before_any_work(processed_dataset, tmp_path, capsys):
    with pytest.raises(UserError, match="frozen regime"):
        plan_runs(["resnet50"], [1], ["finetune"], ["knn"])
    code = main(["train", "--data", str(processed_dataset), "--out", str(tmp_path / "out"), "--backbone", "mobilenet",
                 "--head", "knn", "--regime", "finetune", "--weights", "none"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1 and "--head knn" in error and "--regime frozen" in error
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="session")
def probes(processed_dataset, tmp_path_factory):
    """MobileNet frozen with the linear probe (it builds the feature cache), then the kNN probe on the same
    cache; each evaluated into its own folder. The cache files' stamps are kept between the two. Made once for
    the run, by whichever worker asks first (the slow tier hands out tests, not files)."""
    from cxr.results.evaluate import evaluate

    def make(root: Path) -> dict:
        trained = {"linear": train(processed_dataset, root / "linear", TrainSettings(head="linear", **PROBE),
                                   checkpoint=root / "checkpoints" / "linear")}
        cache = Path(trained["linear"]["features"]["folder"])
        stamps = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cache.iterdir()}
        trained["knn"] = train(processed_dataset, root / "knn", TrainSettings(head="knn", **PROBE),
                               checkpoint=root / "checkpoints" / "knn")
        for head in trained:
            evaluate(processed_dataset, root / head, root / f"{head}-result", samples=20)
        return {"root": str(root), "trained": trained, "cache": str(cache), "stamps": stamps}

    made = made_once(tmp_path_factory, "probes", make)
    return (Path(made["root"]), made["trained"], Path(made["cache"]),
            {name: tuple(stamp) for name, stamp in made["stamps"].items()})


def test_both_probes_read_one_cache_and_never_rewrite_it(probes):
    _, trained, cache, stamps = probes
    assert trained["linear"]["features"]["reused"] is False and trained["knn"]["features"]["reused"] is True
    assert Path(trained["knn"]["features"]["folder"]) == cache
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cache.iterdir()} == stamps
    for head, parameter in (("linear", "C"), ("knn", "k")):
        record = trained[head]
        assert record["head"] == record["settings"]["head"] == head and record["probe"]["parameter"] == parameter
        assert record["epochs_run"] == 1
    assert trained["knn"]["probe"]["references"] == trained["knn"]["train_images"]  # the films its model carries


@pytest.mark.parametrize("head", ["linear", "knn"])
def test_a_probes_saved_model_takes_raw_films_and_predict_equals_evaluate(probes, raw_dataset, head, tmp_path):
    """evaluate scores the cached features with the fitted probe; predict runs model.keras on the raw films."""
    root = probes[0]
    metrics = json.loads((root / f"{head}-result" / files.METRICS).read_text())
    assert metrics["head"] == head and metrics["regime"] == "frozen"
    evaluated = pd.read_csv(root / f"{head}-result" / files.PREDICTIONS)
    out = tmp_path / "predicted.csv"
    assert main(["predict", "--model", str(root / head), "--result", str(root / f"{head}-result"), "--out", str(out),
                 *(str(raw_dataset / source) for source in evaluated["source"])]) == 0
    predicted = pd.read_csv(out, keep_default_na=False)
    assert len(predicted) == len(evaluated) and (predicted["error"] == "").all()
    np.testing.assert_allclose(predicted["probability"], evaluated["probability"], atol=1e-4, rtol=0)


# The linear probe's Grad-CAM takes the seed head's path (a Dense kernel); kNN's layer is the new one.
@pytest.mark.parametrize("head", [pytest.param("linear", marks=pytest.mark.slow), "knn"])
def test_a_probe_is_explained(probes, processed_dataset, head, tmp_path):
    root = probes[0]
    assert main(["explain", "--data", str(processed_dataset), "--model", str(root / head), "--result",
                 str(root / f"{head}-result"), "--out", str(tmp_path / "explained"), "--films", "2"]) == 0
    assert any((tmp_path / "explained").iterdir())


@pytest.mark.slow  # the SavedModel is built from the model predict already loads: a repeat, and 15 s or more
@pytest.mark.parametrize("head", ["linear", "knn"])
def test_a_probe_is_exported(probes, head, tmp_path):
    root = probes[0]
    assert main(["export", "--model", str(root / head), "--result", str(root / f"{head}-result"), "--out",
                 str(tmp_path / "exported")]) == 0
    assert (tmp_path / "exported" / "1").is_dir()


@pytest.mark.slow
def test_a_knn_probe_is_served_and_answers_what_predict_gives(probes, raw_dataset, tmp_path):
    """A real `cxr serve` process on a loopback port, called over HTTP (KServe's v1 protocol)."""
    import base64
    import subprocess
    import sys
    import time

    import requests

    from tests.conftest import free_port

    root = probes[0]
    evaluated = pd.read_csv(root / "knn-result" / files.PREDICTIONS)
    films = [raw_dataset / source for source in evaluated["source"][:4]]
    port = free_port()
    with (tmp_path / "stderr.log").open("w") as stderr:
        server = subprocess.Popen([str(Path(sys.executable).with_name("cxr")), "serve", "--model", str(root / "knn"),
                                   "--result", str(root / "knn-result"), "--port", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 300  # TensorFlow's import and the model's load on a busy 2-core machine
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if requests.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):
                time.sleep(0.5)
        body = {"instances": [{"b64": base64.b64encode(film.read_bytes()).decode()} for film in films]}
        response = requests.post(f"http://127.0.0.1:{port}/v1/models/{settings.SERVE_MODEL_NAME}:predict",
                                 json=body, timeout=120)
        assert response.status_code == 200, (response.text, (tmp_path / "stderr.log").read_text()[-2000:])
        served = [p["probability"] for p in response.json()["predictions"]]
        np.testing.assert_allclose(served, evaluated["probability"][:4], atol=1e-4, rtol=0)
    finally:
        server.kill()
        server.wait(timeout=30)


@pytest.mark.slow
def test_a_linear_head_trains_end_to_end_with_its_backbone(processed_dataset, tmp_path):
    """MedMNIST+'s end-to-end protocol: `--head linear --regime finetune` trains pooling -> Dense(1) with Adam."""
    from cxr.serving.trained import load_model

    metrics = train(processed_dataset, tmp_path / "out", TrainSettings(
        **{**PROBE, "regime": "finetune"}, head="linear", epochs=1, learning_rate=1e-3), checkpoint=tmp_path / "ck")
    assert metrics["head"] == "linear" and metrics["probe"] is None and metrics["epochs_run"] == 1
    model = load_model(tmp_path / "out")
    assert [layer.name for layer in model.layers][-2:] == ["pooling", "pneumonia"]
