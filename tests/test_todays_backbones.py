"""Today's backbones (EfficientNetV2B0, EfficientNetV2S, ConvNeXtTiny, DenseNet121) through the steps a user runs on
a model: train, evaluate, explain and predict, one test per family so each is built only a few times."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cxr import files, settings

SIZE = 64  # a 2 x 2 Grad-CAM grid for these /32 networks; 32 px would leave one cell
# The CNNs of today; the keras-hub foundation models have their own tests (tests/test_hub_backbones.py).
TODAYS = [name for name in settings.ALL_BACKBONES if name not in (*settings.BACKBONES, *settings.HUB_PRESETS)]
LAYER = {"EfficientNetV2B0": "top_activation", "EfficientNetV2S": "top_activation", "DenseNet121": "relu",
         "ConvNeXtTiny": "layer_normalization"}


def test_the_four_are_todays():
    assert TODAYS == ["EfficientNetV2B0", "EfficientNetV2S", "ConvNeXtTiny", "DenseNet121"]


# The slow tier: each repeats, on its own graph, the whole chain that tests/test_hub_backbones.py runs in the
# default tier for a new backbone (90-125 s each in CI on 2 cores). One per family: EfficientNetV2S takes
# EfficientNetV2B0's code path (the same scaling inside the model, the same Grad-CAM layer) at twice its cost; the
# default tier builds it and checks its scaling, the slow tier its mixed precision (tests/test_model.py).
CHAINED = [name for name in TODAYS if name != "EfficientNetV2S"]


# Not the SavedModel: `cxr export` traces the model inside its serving graph as training's tf.function already
# does, and its own code, the same for every backbone, is checked on CNNs and transformers in the default tier
# (tests/test_export.py, tests/test_hub_backbones.py); here it cost 20-30 s a family.
@pytest.mark.slow
@pytest.mark.parametrize("name", CHAINED)
def test_trains_evaluates_explains_and_predicts(name, processed_dataset, raw_dataset, tmp_path):
    from cxr.results.evaluate import evaluate
    from cxr.results.explain import explain
    from cxr.serving.predict import predict_files
    from cxr.training.train import TrainSettings, train

    model_dir = tmp_path / name
    trained = train(processed_dataset, model_dir, TrainSettings(name, epochs=1, image_size=SIZE, weights="none",
                                                                batch_size=16, learning_rate=1e-3))
    assert trained["backbone"] == name and trained["image_size"] == SIZE and trained["epochs_run"] == 1
    assert np.isfinite(trained["best"]["val_loss"])

    metrics = evaluate(processed_dataset, model_dir, model_dir, samples=20)
    evaluated = pd.read_csv(model_dir / files.PREDICTIONS)
    assert metrics["backbone"] == name and metrics["test_images"] == len(evaluated) > 0
    assert 0 <= metrics["roc_auc"]["value"] <= 1 and evaluated["probability"].between(0, 1).all()

    summary = explain(processed_dataset, model_dir, None, tmp_path / "explain", films=4)
    assert summary["backbone"] == name and summary["layer"].startswith(LAYER[name]) and summary["grid"] == [2, 2]
    heatmaps = np.load(tmp_path / "explain" / files.gradcam_heatmaps(name))
    assert heatmaps.shape[1:] == (SIZE, SIZE) and np.isfinite(heatmaps).all()
    assert ((heatmaps >= 0) & (heatmaps <= 1)).all()

    films = [raw_dataset / source for source in evaluated["source"].iloc[:4]]
    predicted = predict_files(model_dir, films)
    np.testing.assert_allclose(predicted["probability"], evaluated["probability"].iloc[:4], atol=1e-4, rtol=0)

    threshold = json.loads((model_dir / files.METRICS).read_text())["thresholds"]["validation"]
    assert 0 <= threshold <= 1
