"""`cxr explain` on real trained models: Grad-CAM from each backbone's last convolutional block, the panels,
and the pointing game on synthetic films whose lesions are known."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr import files
from cxr.cli import main
from cxr.errors import UserError
from cxr.results import explain as ex
from tests.conftest import made_once

SIZE = 128  # MobileNet's last block is size / 32 cells wide: 4 x 4 here, 2 x 2 at 64 px (too coarse to point)


@pytest.fixture(scope="session")
def lesion_study(tmp_path_factory):
    """MobileNet trained from scratch on synthetic films for 8 epochs (about a minute on 2 cores), evaluated; made
    once for the run, by whichever worker asks first (the slow tier hands out tests, not files).

    A wider head without much dropout than the seed's Dense(16) + Dropout(0.5): from scratch at lr 1e-3 those 16
    ReLUs died in two of three trials here and the model stayed at the majority class."""
    from cxr.data.ingest import ingest
    from cxr.data.preprocess import Settings, preprocess
    from cxr.data.synth import synthesize
    from cxr.results.evaluate import evaluate
    from cxr.training.train import TrainSettings, train

    def make(root: Path) -> str:
        synthesize(root / "synthetic", per_class=60, seed=5, min_size=SIZE, max_size=SIZE + 32)
        ingest(str(root / "synthetic"), root / "raw")
        preprocess(root / "raw", root / "data", Settings(image_size=SIZE, val_fraction=0.2, seed=3))
        train(root / "data", root / "model", TrainSettings("MobileNet", epochs=8, image_size=SIZE, weights="none",
                                                           learning_rate=1e-3, batch_size=16, dense_units=64,
                                                           dropout=0.2))
        evaluate(root / "data", root / "model", root / "model", samples=20)
        return str(root)

    return Path(made_once(tmp_path_factory, "lesions", make))


@pytest.mark.slow  # lesion_study trains 8 epochs at 128 px (about 150 s on 2 cores)
@pytest.mark.timeout(600)  # the first to ask for lesion_study trains it
def test_the_pointing_game_is_well_above_random_on_synthetic_lesions(lesion_study, capsys):
    root = lesion_study
    assert main(["explain", "--data", str(root / "data"), "--model", str(root / "model"), "--out",
                 str(root / "explain"), "--lesions", str(root / "synthetic/chest_xray" / files.LESIONS)]) == 0
    print(capsys.readouterr().out)
    summary = json.loads((root / "explain" / files.EXPLAIN_SUMMARY).read_text())
    game = summary["pointing_game"]
    assert game["films"] == pd.read_csv(root / "model" / files.PREDICTIONS)["label"].sum()  # every test lesion film
    assert 0 < game["random_rate"] < 0.2
    assert game["hit_rate"] >= 3 * game["random_rate"], game


@pytest.mark.slow  # lesion_study
@pytest.mark.timeout(600)  # lesion_study, when run alone
def test_explain_writes_the_panel_heatmaps_and_their_films(lesion_study):
    out = lesion_study / "explain-plain"
    summary = ex.explain(lesion_study / "data", lesion_study / "model", None, out, films=6)
    assert "pointing_game" not in summary and summary["layer"] == "conv_pw_13_relu" and summary["grid"] == [4, 4]
    table = pd.read_csv(out / files.gradcam_films("MobileNet"))
    heatmaps = np.load(out / files.gradcam_heatmaps("MobileNet"))
    films = np.load(out / files.explained_films("MobileNet"))
    assert heatmaps.shape == (len(table), SIZE, SIZE) and films.shape == heatmaps.shape and films.dtype == np.uint8
    assert heatmaps.min() >= 0 and heatmaps.max() <= 1
    assert table["in_panel"].sum() == 6 and table["shared"].sum() == 6
    # Grad-CAM's forward pass gives evaluate's probabilities: the heatmaps belong to the films named.
    evaluated = pd.read_csv(lesion_study / "model" / files.PREDICTIONS).set_index("source")
    np.testing.assert_allclose(table["probability"], evaluated.loc[table["source"], "probability"], atol=1e-4)
    assert (out / files.gradcam_panel("MobileNet")).stat().st_size > 10_000
    # The same explanation again reuses the finished folder; another one into it is refused.
    stamp = (out / files.EXPLAIN_SUMMARY).stat().st_mtime_ns
    assert ex.explain(lesion_study / "data", lesion_study / "model", None, out, films=6) == summary
    assert (out / files.EXPLAIN_SUMMARY).stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match="other settings"):
        ex.explain(lesion_study / "data", lesion_study / "model", None, out, films=5)


def test_films_are_chosen_by_outcome_most_confident_first():
    predictions = pd.DataFrame({"source": list("abcdefgh"), "label": [1, 1, 1, 0, 0, 0, 1, 0],
                                "probability": [0.9, 0.95, 0.2, 0.8, 0.1, 0.3, 0.4, 0.05]})
    chosen = ex.choose_films(predictions, 0.5, 5)
    assert list(zip(chosen["source"], chosen["outcome"], strict=True)) == [
        ("b", "TP"), ("a", "TP"), ("c", "FN"), ("d", "FP"), ("h", "TN")]
    assert ex.choose_films(predictions, 0.5, 5).equals(chosen)
    shared = ex.shared_films(predictions, 4)
    assert len(shared) == 4 and set(predictions.set_index("source").loc[shared, "label"]) == {0, 1}
    assert shared == ex.shared_films(predictions.sample(frac=1, random_state=1), 4)  # names alone decide


def test_pointing_game_geometry():
    boxes = ex.square_boxes(pd.DataFrame({"file": ["f", "f"], "width": [200, 200], "height": [100, 100],
                                          "x_min": [0, 100], "y_min": [0, 50], "x_max": [50, 200],
                                          "y_max": [50, 100]}), 10)
    np.testing.assert_allclose(boxes["f"], [[0, 0, 2.5, 5], [5, 5, 10, 10]])
    assert ex.area_share(boxes["f"], 10) == pytest.approx(0.125 + 0.25)
    maps = np.zeros((2, 4, 4))
    maps[0, 3, 3] = 1  # bottom-right cell, centre (8.75, 8.75): inside the second box
    maps[1, 0, 2] = 1  # top row, third cell, centre (6.25, 1.25): in neither
    points = ex.peak_points(maps, 10)
    np.testing.assert_allclose(points, [[8.75, 8.75], [6.25, 1.25]])
    game = ex.pointing_game(points, [boxes["f"], boxes["f"]], 10)
    assert (game["hits"], game["hit_rate"]) == (1, 0.5)


def test_the_last_convolutional_block_of_each_backbone():
    from cxr.training.backbones import BACKBONES

    expected = {"MobileNet": "conv_pw_13_relu", "InceptionV3": "mixed10", "Xception": "block14_sepconv2_act",
                "ResNet50": "conv5_block3_out", "VGG16": "block5_conv3",  # VGG16's last layer is block5_pool
                "EfficientNetV2B0": "top_activation", "EfficientNetV2S": "top_activation", "DenseNet121": "relu",
                # ConvNeXt without its top ends in an unnamed LayerNormalization of the last stage: what Flatten reads.
                "ConvNeXtTiny": "layer_normalization"}
    for backbone in BACKBONES.values():
        if backbone.patch_size > 1:  # the vision transformers have no convolutional block (test_hub_backbones.py)
            continue
        size = max(backbone.min_size, 32)
        model = backbone.build(include_top=False, weights=None, input_shape=(size, size, 3))
        layer = ex.last_conv_layer(model)
        # Keras numbers a repeated automatic name (layer_normalization_3): compare without that number.
        assert re.sub(r"_\d+$", "", layer.name) == expected[backbone.name]
        assert layer is model.layers[-1] or backbone.name == "VGG16"  # the block the head reads


def test_backbones_side_by_side(evaluated_results, processed_dataset, tmp_path):
    """The report's comparison: the same films under each backbone, from two real trained backbones (VGG16's
    last layer is a pooling layer, MobileNet's a ReLU)."""
    folders = []
    for name, result in evaluated_results.items():
        ex.explain(processed_dataset, result.parent / f"{name}-model", result, tmp_path / name, films=4)
        folders.append(tmp_path / name)
    figure = ex.compare_backbones(folders, tmp_path / files.GRADCAM_COMPARISON)
    assert figure is not None and figure.stat().st_size > 10_000
    section = ex.explanations_html(folders, tmp_path / "report")
    assert section.count('src="data:image/png;base64,') == 3  # the comparison and one panel per backbone
    assert "<td>VGG16</td><td>block5_conv3" in section and (tmp_path / "report" / files.GRADCAM_COMPARISON).is_file()
    shared = [set(pd.read_csv(f / files.gradcam_films(n)).query("shared")["source"])
              for f, n in zip(folders, evaluated_results, strict=True)]
    assert shared[0] == shared[1] and len(shared[0]) == 4


def test_model_card_gives_data_use_metrics_threshold_and_limits(evaluated_results, processed_dataset):
    from cxr.results.model_card import model_card_html

    stats = json.loads((processed_dataset / files.STATS).read_text())
    manifest = pd.read_csv(processed_dataset / files.MANIFEST)
    metrics = {name: json.loads((folder / files.METRICS).read_text()) for name, folder in evaluated_results.items()}
    board = sorted(({"backbone": n, "roc_auc": m["roc_auc"]["value"]} for n, m in metrics.items()),
                   key=lambda row: -row["roc_auc"])
    game = {"backbone": "VGG16", "layer": "block5_conv3", "grid": [2, 2],
            "pointing_game": {"hit_rate": 0.41, "random_rate": 0.07, "films": 17}}
    assert stats["dataset"]["synthetic"]  # cxr synth's marker, carried by ingest and preprocess
    card = model_card_html(stats, board, metrics, [game], chosen="VGG16", manifest=manifest)
    assert card.startswith("<h2>Model card: VGG16</h2>")
    test_counts = stats["counts"]["test"]
    test_patients = manifest.loc[manifest["split"] == "test", "patient_id"].nunique()
    assert (f"<tr><td>test</td><td>{test_counts['NORMAL']}</td><td>{test_counts['PNEUMONIA']}</td>"
            f"<td>{sum(test_counts.values())}</td><td>{test_patients}</td></tr>") in card
    assert f"P &ge; {metrics['VGG16']['thresholds']['validation']:.3f}" in card
    low, high = metrics["VGG16"]["roc_auc"]["ci95"]
    assert f"({low:.3f}&ndash;{high:.3f})" in card
    assert "Not for" in card and "Diagnosing" in card and "synthetic films" in card
    assert "VGG16 0.41 against 0.07 for a random point (17 films)" in card
    kaggle = {**stats, "dataset": {**stats["dataset"], "synthetic": False, "source": "kaggle"}}
    real = model_card_html(kaggle, board, metrics, [])
    assert f"Model card: {board[0]['backbone']}" in real and "Single site" in real and "No Grad-CAM" in real


def test_the_explain_component_compiles_into_a_pipeline(tmp_path):
    """The KFP wrapper the lead wires into the pipeline: its interface compiles (it runs the library tested above)."""
    from kfp import compiler, dsl

    from components.explain import explain_backbone

    @dsl.pipeline(name="explain-only")
    def explain_only():  # no parameters: this module's postponed annotations would reach KFP as strings
        processed = dsl.importer(artifact_uri="gs://b/processed", artifact_class=dsl.Dataset)
        model = dsl.importer(artifact_uri="gs://b/model", artifact_class=dsl.Model)
        result = dsl.importer(artifact_uri="gs://b/result", artifact_class=dsl.Artifact)
        explain_backbone(processed=processed.output, model=model.output, result=result.output, films=4,
                         source="gs://b/source")

    compiler.Compiler().compile(explain_only, str(tmp_path / "explain.yaml"))
    text = (tmp_path / "explain.yaml").read_text()
    assert "explain-backbone" in text and "cxr.results.explain" in text
