"""The keras-hub backbones (DINOv2Small, DINOv2Base, MedSigLIP): their architecture without network, their presets
read from a folder or a gs:// prefix and refused in one line when damaged, and every step a user runs.

The whole-chain tests build the same keras-hub classes at a tiny size (2 layers, width 32, random weights): the
`tiny` fixture swaps the registry's hyperparameters for the test's duration, in this process only (so `cxr serve`
is exercised through its KServe model in-process, not a subprocess that would build the full size). The full-size
architectures are built in the slow tier, against the parameter counts keras-hub publishes for the presets.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from cxr import files, settings
from cxr.errors import UserError
from cxr.training import hub, weights
from cxr.training.backbones import get_backbone
from cxr.training.model import backbone_of, build_model

SIZE = 28  # two patches of 14 px a side: a 2 x 2 grid for Grad-CAM
HUB = ["DINOv2Small", "DINOv2Base", "MedSigLIP"]
TINY = {"num_layers": 2, "hidden_dim": 32, "num_heads": 2, "intermediate_dim": 64}


@pytest.fixture
def tiny(monkeypatch):
    """Every keras-hub backbone at 2 layers of width 32, same classes and patch size."""
    for name, found in hub.ARCHITECTURES.items():
        monkeypatch.setitem(hub.ARCHITECTURES, name, dataclasses.replace(found, config={**found.config, **TINY}))


def _tokens(model):
    return backbone_of(model)


def _backbone_weights(model) -> list[np.ndarray]:
    return [w.numpy() for w in _tokens(model).weights]


def test_the_registry_names_the_three_with_their_presets():
    assert [name for name in settings.ALL_BACKBONES if name in settings.HUB_PRESETS] == HUB
    assert [weights.hub_preset(name.lower()) for name in HUB] == ["dinov2_small", "dinov2_base", "medsiglip_900m_448"]
    assert [get_backbone(name).native_size for name in HUB] == [224, 224, 448]
    assert weights.hub_preset("ResNet50") is None and weights.every_preset(["ResNet50", "MedSigLIP"]) == [
        "medsiglip_900m_448"]
    from cxr.training.plan import plan_runs  # the pipeline's `backbones` takes them, in any letter case

    assert [run["backbone"] for run in plan_runs(["dinov2small", "DINOv2Base", "medsiglip"], [1], ["frozen"])] == HUB


@pytest.mark.parametrize("name", HUB)
def test_weights_none_builds_the_token_sequence_with_no_network(name, tiny, monkeypatch):
    """Class token (or MedSigLIP's pooled token) first, then one token per patch, no register token; and nothing
    downloads: kagglehub is made to fail if anything calls it."""
    import kagglehub

    monkeypatch.setattr(kagglehub, "model_download", lambda *a, **k: pytest.fail("downloaded"))
    model = build_model(get_backbone(name), SIZE, weights="none")
    tokens = _tokens(model)
    assert tuple(tokens.output.shape) == (None, 1 + (SIZE // 14) ** 2, 32)
    films = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 1), dtype=np.uint8)
    probabilities = np.asarray(model.predict(films, verbose=0)).reshape(-1)
    assert probabilities.shape == (2,) and ((probabilities > 0) & (probabilities < 1)).all()


@pytest.mark.parametrize("name", ["DINOv2Small", "MedSigLIP"])
def test_output_stays_float32_under_mixed_precision(name, tiny):
    import keras

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model(get_backbone(name), SIZE, weights="none")
        assert backbone_of(model).compute_dtype == "float16"
        output = model.predict_on_batch(np.zeros((2, SIZE, SIZE, 1), np.uint8))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert output.shape == (2, 1) and output.dtype == np.float32 and np.isfinite(output).all()


def test_each_backbone_scales_as_its_image_converter():
    import keras

    white = keras.ops.convert_to_numpy(get_backbone("DINOv2Small").preprocess_input(np.full((1, 1, 1, 3), 255.0)))
    np.testing.assert_allclose(white.reshape(-1), [(1 - m) / s for m, s in zip(hub.IMAGENET_MEAN, hub.IMAGENET_STD,
                                                                               strict=True)], rtol=1e-6)
    black = keras.ops.convert_to_numpy(get_backbone("MedSigLIP").preprocess_input(np.zeros((1, 1, 1, 3))))
    np.testing.assert_allclose(black.reshape(-1), [-1, -1, -1])


def test_an_image_size_off_the_patch_grid_is_lowered_to_it(capsys):
    from cxr.training.backbones import input_size

    assert input_size(get_backbone("DINOv2Small"), 40) == 28
    assert "lowered to 28, a multiple of its patch size (14 px)" in capsys.readouterr().err
    assert input_size(get_backbone("DINOv2Small"), 16) == 28  # raised to the minimum


def _tiny_preset(name: str, folder) -> list[np.ndarray]:
    """A tiny random backbone of `name`'s class saved as keras-hub saves a preset, in `folder`; its weights."""
    core = hub.random(name, (SIZE, SIZE, 3))
    core.save_to_preset(str(folder))
    return [w.numpy() for w in hub.token_model(name, core, (SIZE, SIZE, 3)).weights]


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    """A --weights folder holding tiny presets of DINOv2Small and MedSigLIP under their preset names."""
    root = tmp_path_factory.mktemp("presets")
    with pytest.MonkeyPatch.context() as patch:
        for name, found in hub.ARCHITECTURES.items():
            patch.setitem(hub.ARCHITECTURES, name, dataclasses.replace(found, config={**found.config, **TINY}))
        saved = {name: _tiny_preset(name, root / settings.HUB_PRESETS[name]) for name in ("DINOv2Small", "MedSigLIP")}
    return root, saved


def _assert_equal(expected, got):
    assert len(expected) == len(got) > 10
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_folder_of_presets_loads_offline(presets):
    root, saved = presets
    model = build_model(get_backbone("DINOv2Small"), SIZE, weights=str(root))
    _assert_equal(saved["DINOv2Small"], _backbone_weights(model))
    weights.check(root, ["DINOv2Small", "MedSigLIP", ])


def test_imagenet_reads_the_baked_folder_first(presets, monkeypatch):
    root, saved = presets
    monkeypatch.setattr(settings, "IMAGENET_WEIGHTS", str(root))
    assert weights.resolve("pretrained", "DINOv2Small", SIZE) == (str(root / "dinov2_small"), None)


def test_a_gs_prefix_of_presets_loads(presets, bucket):
    root, saved = presets
    for path in (root / "dinov2_small").iterdir():
        bucket.blob(f"hub/dinov2_small/{path.name}").upload_from_filename(str(path))
    model = build_model(get_backbone("DINOv2Small"), SIZE, weights=f"gs://{bucket.name}/hub")
    _assert_equal(saved["DINOv2Small"], _backbone_weights(model))


def test_a_missing_preset_is_one_line_naming_it(tmp_path):
    with pytest.raises(UserError, match=r"--weights .*: holds no dinov2_base/, the keras-hub preset of DINOv2Base"):
        weights.resolve(str(tmp_path), "DINOv2Base", 224)
    with pytest.raises(UserError, match=r"missing .*dinov2_small/, .*medsiglip_900m_448/"):
        weights.check(tmp_path, ["DINOv2Small", "MedSigLIP"])


@pytest.mark.parametrize("damage", ["half-copied", "truncated", "bad config"])
def test_a_damaged_preset_is_one_line_naming_it_and_exit_2(damage, presets, tmp_path, capsys):
    import shutil

    from cxr.cli import main

    root, _ = presets
    shutil.copytree(root / "dinov2_small", tmp_path / "dinov2_small")
    preset = tmp_path / "dinov2_small"
    if damage == "half-copied":
        (preset / "model.weights.h5").unlink()
    elif damage == "truncated":
        data = (preset / "model.weights.h5").read_bytes()
        (preset / "model.weights.h5").write_bytes(data[: len(data) // 2])
    else:
        (preset / "config.json").write_text("{not json")
    with pytest.raises(UserError, match=f"{preset}/?: not a whole keras-hub preset"):
        weights.resolve(str(tmp_path), "DINOv2Small", SIZE)
    code = main(["train", "--data", str(tmp_path / "no-data-needed"), "--out", str(tmp_path / "out"),
                 "--backbone", "DINOv2Small", "--image-size", str(SIZE), "--weights", str(tmp_path)])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and "not a whole keras-hub preset" in error[0] and str(preset) in error[0]
    assert not (tmp_path / "out").exists()


def test_imagenet_without_network_is_one_line(tiny, tmp_path, monkeypatch):
    """No Kaggle here: kagglehub's download fails, and the user reads one line saying what is needed."""
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match=r"--weights imagenet: the keras-hub preset dinov2_small could not be "
                                        r"downloaded \(.*\); it needs network, Kaggle credentials"):
        build_model(get_backbone("DINOv2Small"), SIZE, weights="imagenet")


def test_medsiglip_pretrained_fits_448_px_only(presets):
    root, _ = presets
    with pytest.raises(UserError, match="MedSigLIP: its pretrained weights fit 448 px only"):
        build_model(get_backbone("MedSigLIP"), SIZE, weights=str(root))


# The whole chain: DINOv2Small fine-tuned from random weights, MedSigLIP frozen on a preset folder (the offline
# path of the frozen regime); DINOv2Base is the DINOv2 class again, in the slow tier.
CHAINS = [pytest.param("DINOv2Small", "finetune", id="DINOv2Small-finetune"),
          pytest.param("MedSigLIP", "frozen", id="MedSigLIP-frozen"),
          pytest.param("DINOv2Base", "frozen", id="DINOv2Base-frozen", marks=pytest.mark.slow)]


@pytest.mark.parametrize(("name", "regime"), CHAINS)
def test_trains_evaluates_explains_predicts_exports_and_serves(name, regime, tiny, presets, processed_dataset,
                                                               raw_dataset, synthetic_archive, tmp_path, monkeypatch):
    import tensorflow as tf

    from cxr.results.evaluate import evaluate
    from cxr.results.explain import explain
    from cxr.serving.export import export
    from cxr.serving.predict import predict_files
    from cxr.serving.server import PneumoniaModel, Served
    from cxr.serving.trained import find_threshold, read_preprocessing
    from cxr.training.train import TrainSettings, train

    root, saved = presets
    if name == "MedSigLIP":  # its pretrained weights fit 448 px only: the tiny preset is its pretrained size
        monkeypatch.setitem(hub.ARCHITECTURES, name, dataclasses.replace(hub.ARCHITECTURES[name],
                                                                         pretrained_size=SIZE))
    given = str(root) if name == "MedSigLIP" else "none"
    model_dir = tmp_path / name
    trained = train(processed_dataset, model_dir, TrainSettings(name, epochs=1, image_size=SIZE, weights=given,
                                                                batch_size=16, learning_rate=1e-3, regime=regime))
    assert trained["backbone"] == name and trained["image_size"] == SIZE and trained["epochs_run"] == 1
    assert np.isfinite(trained["best"]["val_loss"])

    metrics = evaluate(processed_dataset, model_dir, model_dir, samples=20)
    evaluated = pd.read_csv(model_dir / files.PREDICTIONS)
    assert metrics["backbone"] == name and 0 <= metrics["roc_auc"]["value"] <= 1

    summary = explain(processed_dataset, model_dir, None, tmp_path / "explain", films=4,
                      lesions=synthetic_archive / "chest_xray" / files.LESIONS)
    assert summary["backbone"] == name and summary["grid"] == [2, 2]
    heatmaps = np.load(tmp_path / "explain" / files.gradcam_heatmaps(name))
    assert heatmaps.shape[1:] == (SIZE, SIZE) and np.isfinite(heatmaps).all() and heatmaps.max() > 0
    game = summary["pointing_game"]  # scored as for the CNNs; tiny random ViTs: no claim on where they look
    print(f"{name} pointing game: {json.dumps(game)}")
    assert game["films"] > 0 and 0 <= game["hit_rate"] <= 1

    films = [raw_dataset / source for source in evaluated["source"].iloc[:4]]
    predicted = predict_files(model_dir, films)
    np.testing.assert_allclose(predicted["probability"], evaluated["probability"].iloc[:4], atol=1e-4, rtol=0)
    if name == "MedSigLIP":  # the preset's weights went through untouched by the frozen training
        from cxr.serving.trained import load_model

        _assert_equal(saved[name], _backbone_weights(load_model(model_dir)))

    version = export(model_dir, tmp_path / "serving")
    signature = tf.saved_model.load(str(version)).signatures["serving_default"]
    served = signature(image_bytes=tf.constant([film.read_bytes() for film in films]))["probability"].numpy()
    assert np.abs(served - predicted["probability"].to_numpy()).max() < 0.02

    server = PneumoniaModel("cxr", Served(model_dir, name, read_preprocessing(model_dir), find_threshold(model_dir)))
    assert server.load()
    probabilities, _ = server.answer([film.read_bytes() for film in films])  # what every route answers
    np.testing.assert_allclose(probabilities, predicted["probability"], atol=1e-4, rtol=0)
    assert json.loads((model_dir / files.TRAIN_METRICS).read_text())["settings"]["regime"] == regime


@pytest.mark.slow
@pytest.mark.parametrize("name", HUB)
def test_the_full_size_architectures(name):
    """The registry's hyperparameters give keras-hub's published parameter counts (DINOv2: its presets' metadata;
    MedSigLIP: So400m/14's vision tower, 428.6 M as built here, 1 + 32 x 32 tokens of width 1152 at 448 px)."""
    from keras_hub.src.models.dinov2.dinov2_presets import backbone_presets

    size = get_backbone(name).native_size
    core = hub.random(name, (size, size, 3))
    tokens = hub.token_model(name, core, (size, size, 3))
    if name == "MedSigLIP":
        assert tuple(tokens.output.shape) == (None, 1 + 32 * 32, 1152)
        assert 4.0e8 < core.count_params() < 4.5e8
    else:
        assert tuple(tokens.output.shape) == (None, 1 + 16 * 16, hub.ARCHITECTURES[name].config["hidden_dim"])
        # The presets' configs keep image_shape 518 x 518, and keras-hub keeps position embeddings for the input's
        # 1 + 37 x 37 tokens as a weight: their published count is of a model built at 518 px.
        published = backbone_presets[settings.HUB_PRESETS[name]]["metadata"]["params"]
        assert hub.random(name, (518, 518, 3)).count_params() == published
