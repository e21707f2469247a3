import keras
import numpy as np
import pytest

from cxr import settings
from cxr.errors import UserError
from cxr.training.backbones import BACKBONES, get_backbone, input_size
from cxr.training.model import build_model


def test_names_match_in_any_case_and_unknown_ones_list_the_valid():
    assert get_backbone("RESNET50").name == "ResNet50"
    assert get_backbone("inceptionv3").native_size == 299
    assert get_backbone("convnexttiny").name == "ConvNeXtTiny" and get_backbone("EfficientNetV2S").native_size == 384
    with pytest.raises(UserError, match="valid: MobileNet, InceptionV3, Xception, ResNet50, VGG16, EfficientNetV2B0, "
                                        "EfficientNetV2S, ConvNeXtTiny, DenseNet121"):
        get_backbone("resnet18")


def test_native_size_for_zero_and_small_sizes_raised_to_the_minimum(capsys):
    assert input_size(get_backbone("vgg16"), 0) == 224
    assert input_size(get_backbone("xception"), 0) == 299
    assert input_size(get_backbone("mobilenet"), 64) == 64
    assert input_size(get_backbone("InceptionV3"), 64) == 75
    assert "raised to its minimum, 75" in capsys.readouterr().err
    with pytest.raises(UserError, match="--image-size"):
        input_size(get_backbone("vgg16"), -1)


@pytest.fixture
def mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy("float32")


def _films(size: int, count: int = 2) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (count, size, size, 1)).astype("uint8")


def _backbone_of(model: keras.Model) -> keras.Model:
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


# The seed's five here, today's four in tests/test_todays_backbones.py. Compiling a training step of these three
# takes 20-35 s each on 2 cores: the slow tier trains them; the default tier still builds and runs every backbone
# (below, and tests/test_explain.py).
SLOW_TO_TRAIN = {"InceptionV3", "Xception", "ResNet50"}


@pytest.mark.parametrize("name", [pytest.param(b.name, marks=[pytest.mark.slow] if b.name in SLOW_TO_TRAIN else [])
                                  for b in BACKBONES.values() if b.name in settings.BACKBONES])
def test_every_backbone_builds_the_seed_head_and_trains_a_step(name):
    backbone = get_backbone(name)
    model = build_model(backbone, backbone.min_size, weights="none")
    assert [layer.__class__.__name__ for layer in model.layers[-4:]] == ["Flatten", "Dense", "Dropout", "Dense"]
    assert model.layers[-3].units == 16 and model.layers[-2].rate == 0.5
    model.compile(keras.optimizers.Adam(1e-5), "binary_crossentropy")
    model.optimizer.build(model.trainable_variables)  # as `cxr train` does: the step is traced once, not twice
    before = [w.numpy().copy() for w in model.trainable_weights]
    loss = model.train_on_batch(_films(backbone.min_size), np.array([0.0, 1.0]))
    assert np.isfinite(loss)
    changed = [not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights, strict=True)]
    assert all(changed)


# The keras-hub backbones, at a tiny size: tests/test_hub_backbones.py.
# MobileNet (scaled outside the model) and EfficientNetV2B0 (inside it) in the default tier, the others in the slow.
@pytest.mark.parametrize("name", [pytest.param(b.name, marks=[] if b.name in ("MobileNet", "EfficientNetV2B0")
                                               else [pytest.mark.slow])
                                  for b in BACKBONES.values() if b.name not in settings.HUB_PRESETS])
def test_output_stays_float32_under_mixed_precision(name, mixed_precision):
    backbone = get_backbone(name)
    model = build_model(backbone, backbone.min_size, weights="none")
    assert _backbone_of(model).compute_dtype == "float16"  # the backbone runs in half precision
    assert model.get_layer("preprocess").compute_dtype == "float32"
    output = model.predict_on_batch(_films(backbone.min_size))
    assert output.shape == (2, 1) and output.dtype == np.float32
    assert ((output >= 0) & (output <= 1)).all()


def test_weights_file_is_loaded_into_the_backbone(tmp_path):
    backbone = get_backbone("mobilenet")
    source = build_model(backbone, 32, weights="none")
    path = tmp_path / "mobilenet.weights.h5"
    _backbone_of(source).save_weights(path)
    loaded = build_model(backbone, 32, weights=str(path))
    for expected, got in zip(_backbone_of(source).weights, _backbone_of(loaded).weights, strict=True):
        np.testing.assert_array_equal(expected.numpy(), got.numpy())


def test_a_missing_weights_file_is_one_clear_error():
    with pytest.raises(UserError, match="--weights /nope.weights.h5"):
        build_model(get_backbone("mobilenet"), 32, weights="/nope.weights.h5")


@pytest.mark.parametrize("name", ["EfficientNetV2B0", "EfficientNetV2S", "ConvNeXtTiny"])
def test_backbones_that_scale_inside_get_0_to_255_rgb_and_scale_once(name):
    backbone = get_backbone(name)
    model = build_model(backbone, 32, weights="none")
    films = _films(32)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("preprocess")(films)),
                                  np.repeat(films.astype("float32"), 3, axis=-1))
    scaling = [layer for layer in _backbone_of(model).layers[:3]
               if isinstance(layer, keras.layers.Rescaling | keras.layers.Normalization)]
    assert scaling, "include_preprocessing=True puts the scaling at the backbone's bottom"


def test_densenet_gets_torch_scaling():
    model = build_model(get_backbone("DenseNet121"), 32, weights="none")
    films = np.full((1, 32, 32, 1), 255, dtype="uint8")
    scaled = keras.ops.convert_to_numpy(model.get_layer("preprocess")(films))[0, 0, 0]
    np.testing.assert_allclose(scaled, (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]),
                               rtol=1e-5)


def test_preprocessing_is_the_backbones_own_and_survives_saving(tmp_path):
    backbone = get_backbone("vgg16")
    model = build_model(backbone, 32, weights="none")
    films = _films(32)
    expected = backbone.preprocess_input(np.repeat(films.astype("float32"), 3, axis=-1))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.get_layer("preprocess")(films)), expected, rtol=1e-6)
    model.save(tmp_path / "model.keras")
    reloaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(reloaded.predict_on_batch(films), model.predict_on_batch(films), rtol=1e-5)


def test_frozen_backbone_trains_the_head_only():
    model = build_model(get_backbone("mobilenet"), 32, weights="none", train_backbone=False)
    trainable = {w.path.split("/")[0] for w in model.trainable_weights}
    assert trainable == {"dense", "pneumonia"}


def test_plan_lists_every_backbone_regime_and_seed_and_refuses_repeats():
    from cxr.training.plan import plan_runs

    seed = {"head": "seed", "learning_rate": 1e-5}  # the seed's head and learning rate, the defaults
    assert plan_runs(["vgg16", "MobileNet"], [42, 7.0]) == [
        {"backbone": "VGG16", "regime": "finetune", "seed": 42, **seed},
        {"backbone": "VGG16", "regime": "finetune", "seed": 7, **seed},
        {"backbone": "MobileNet", "regime": "finetune", "seed": 42, **seed},
        {"backbone": "MobileNet", "regime": "finetune", "seed": 7, **seed}]
    # Fine-tuning first, whatever the order the regimes are listed in: the long trainings start first.
    assert plan_runs(["densenet121", "MobileNet"], [1], ["frozen", "finetune"]) == [
        {"backbone": "DenseNet121", "regime": "finetune", "seed": 1, **seed},
        {"backbone": "MobileNet", "regime": "finetune", "seed": 1, **seed},
        {"backbone": "DenseNet121", "regime": "frozen", "seed": 1, **seed},
        {"backbone": "MobileNet", "regime": "frozen", "seed": 1, **seed}]
    with pytest.raises(UserError, match="regimes: unknown regime 'linear'; valid: finetune, frozen"):
        plan_runs(["VGG16"], [1], ["frozen", "linear"])
    with pytest.raises(UserError, match="regimes: frozen is listed more than once"):
        plan_runs(["VGG16"], [1], ["frozen", "frozen"])
    with pytest.raises(UserError, match="regimes: the list is empty"):
        plan_runs(["VGG16"], [1], [])
    with pytest.raises(UserError, match=r"MobileNet is listed more than once \(MobileNet, mobilenet\)"):
        plan_runs(["MobileNet", "mobilenet"], [42])
    with pytest.raises(UserError, match="valid: MobileNet"):
        plan_runs(["AlexNet"], [42])
    with pytest.raises(UserError, match="a seed is repeated"):
        plan_runs(["VGG16"], [1, 1])
    with pytest.raises(UserError, match="whole numbers"):
        plan_runs(["VGG16"], [1.5])
    with pytest.raises(UserError, match="empty"):
        plan_runs([], [42])


def test_every_name_a_user_types_is_matched_without_blanks_in_any_case():
    from cxr.training.plan import TrainSettings, plan_runs

    seed = {"head": "linear", "learning_rate": 1e-5}
    assert plan_runs([" vgg16 ", "MOBILENET"], [42], [" FROZEN", "Finetune "], [" Linear"]) == [
        {"backbone": "VGG16", "regime": "finetune", "seed": 42, **seed},
        {"backbone": "MobileNet", "regime": "finetune", "seed": 42, **seed},
        {"backbone": "VGG16", "regime": "frozen", "seed": 42, **seed},
        {"backbone": "MobileNet", "regime": "frozen", "seed": 42, **seed}]
    with pytest.raises(UserError, match="regimes: frozen is listed more than once"):
        plan_runs(["VGG16"], [1], ["frozen", "Frozen"])
    options = TrainSettings(" resnet50", regime="FROZEN ")
    options.validate()
    assert (options.backbone, options.regime) == ("ResNet50", "frozen")
    with pytest.raises(UserError, match="--regime must be one of finetune, frozen, got 'sideways'"):
        TrainSettings("ResNet50", regime="sideways").validate()


def test_every_backbone_and_regime_gets_every_learning_rate_and_seed():
    from cxr.training.plan import plan_runs

    runs = plan_runs(["MobileNet", "VGG16"], [42, 7], ["finetune", "frozen"],
                     learning_rates=[1e-3, 1e-4, 1])  # KFP: 1 for 1.0
    assert len(runs) == 2 * 2 * 3 * 2
    for backbone in ("MobileNet", "VGG16"):
        for regime in ("finetune", "frozen"):
            budget = [(r["learning_rate"], r["seed"]) for r in runs
                      if (r["backbone"], r["regime"]) == (backbone, regime)]
            assert sorted(budget) == sorted((rate, seed) for rate in (1e-3, 1e-4, 1.0) for seed in (42, 7))
    assert all(isinstance(r["learning_rate"], float) for r in runs)


@pytest.mark.parametrize("rates, message", [
    ([], "learning_rates: the list is empty"),
    ([1e-3, 1e-4, 0.001], "learning_rates: 0.001 is listed more than once"),
    ([1e-3, 0], "learning_rates: 0 is not a positive finite number"),
    ([-1e-3], "learning_rates: -0.001 is not a positive finite number"),
    ([float("nan")], "learning_rates: nan is not a positive finite number"),
    ([float("inf")], "learning_rates: inf is not a positive finite number"),
    (["1e-3"], "learning_rates: '1e-3' is not a positive finite number"),
    ([True], "learning_rates: True is not a positive finite number"),
])
def test_the_plan_refuses_a_bad_learning_rate_list_in_one_line(rates, message):
    from cxr.training.plan import plan_runs

    with pytest.raises(UserError) as raised:
        plan_runs(["MobileNet"], [42], ["finetune"], learning_rates=rates)
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_a_probe_fitted_by_scikit_learn_is_planned_once_whatever_the_learning_rates():
    from cxr.training.plan import plan_runs

    runs = plan_runs(["MobileNet"], [42, 7], ["frozen", "finetune"], ["seed", "linear", "knn"],
                     learning_rates=[1e-3, 1e-4])
    budget: dict[tuple, list] = {}
    for run in runs:
        budget.setdefault((run["regime"], run["head"]), []).append((run["learning_rate"], run["seed"]))
    every = sorted((rate, seed) for rate in (1e-3, 1e-4) for seed in (42, 7))
    assert {key: sorted(value) for key, value in budget.items()} == {
        ("frozen", "seed"): every, ("finetune", "seed"): every,
        ("finetune", "linear"): every,  # trained end to end with Adam: it has a learning rate to search
        ("frozen", "linear"): [(1e-3, 7), (1e-3, 42)], ("frozen", "knn"): [(1e-3, 7), (1e-3, 42)]}


def test_the_plan_knows_the_registrys_backbones_without_importing_tensorflow():
    import subprocess
    import sys

    assert [b.name for b in BACKBONES.values()] == list(settings.ALL_BACKBONES)
    assert settings.ALL_BACKBONES[:5] == settings.BACKBONES  # the default stays the seed's five
    check = ("import sys, cxr.training.plan, cxr.training.supervise; "
             "print(sorted({'tensorflow', 'keras', 'jax'} & set(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"  # the plan step and the train task's parent start light
