"""`cxr train --regime frozen` on real backbones: the head trains on cached features, the saved classifier is the
whole model and agrees with the head, a second seed reuses the cache, and a training killed while extracting is
run again to a sound cache."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr import artifacts, files
from cxr.cli import main
from cxr.training import features as fc
from cxr.training.plan import flag
from cxr.training.train import TrainSettings, train
from tests.conftest import train_killed_after_epoch

FROZEN = dict(backbone="mobilenet", image_size=32, weights="none", batch_size=16, learning_rate=1e-3, patience=3,
              regime="frozen")
CXR = str(Path(sys.executable).with_name("cxr"))
ROOT = Path(__file__).resolve().parents[1]


def _stamps(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}


@pytest.fixture(scope="module")
def frozen_run(processed_dataset, tmp_path_factory):
    """MobileNet frozen, seed 1, 3 epochs, its features in the default place (beside the checkpoint folder);
    evaluated into its own folder."""
    from cxr.results.evaluate import evaluate

    root = tmp_path_factory.mktemp("frozen")
    metrics = train(processed_dataset, root / "seed1", TrainSettings(epochs=3, seed=1, **FROZEN),
                    checkpoint=root / "checkpoints" / "seed1")
    evaluate(processed_dataset, root / "seed1", root / "seed1-result", samples=20)
    return root, metrics


def test_frozen_records_its_regime_cache_and_extraction_time(frozen_run):
    root, metrics = frozen_run
    assert metrics["regime"] == "frozen" and metrics["settings"]["regime"] == "frozen"
    assert metrics["feature_seconds"] > 0 and metrics["epochs_run"] == 3
    cache = Path(metrics["features"]["folder"])
    assert cache.parent == root / "checkpoints" / "features" and metrics["features"]["reused"] is False
    key = fc.FeatureKey(**metrics["features"]["key"])
    assert key.backbone == "MobileNet" and key.image_size == 32 and key.precision == "float32"
    assert fc.problem(cache, key) is None
    assert np.load(cache / "train.npy", mmap_mode="r").shape == (metrics["train_images"], 1, 1, 1024)
    assert json.loads((root / "seed1" / files.TRAIN_METRICS).read_text()) == metrics


def test_the_saved_model_is_the_whole_classifier_and_agrees_with_the_head(frozen_run, processed_dataset):
    """model.keras run on the films gives the head's probabilities on the cached features, to 1e-4; the
    backbone in it is the one that computed the cache, never updated."""
    from cxr.results.evaluate import predict
    from cxr.serving.trained import load_model
    from cxr.training.model import backbone_of

    root, metrics = frozen_run
    model = load_model(root / "seed1")
    head = pd.read_csv(root / "seed1" / files.HEAD_PREDICTIONS)
    for split in ("val", "test"):
        whole = predict(model, processed_dataset, split, 32, 16)
        cached = head[head["split"] == split].reset_index(drop=True)
        assert list(whole["source"]) == list(cached["source"]) and len(whole) > 0
        np.testing.assert_allclose(whole["probability"], cached["probability"], atol=1e-4, rtol=0)
    trained_backbone = backbone_of(model)
    reference = load_model(root / "seed1")
    backbone_of(reference).load_weights(Path(metrics["features"]["folder"]) / fc.BACKBONE_WEIGHTS)
    for got, expected in zip(trained_backbone.weights, backbone_of(reference).weights, strict=True):
        np.testing.assert_array_equal(got.numpy(), expected.numpy())


def test_evaluate_reports_the_heads_predictions(frozen_run):
    root, _ = frozen_run
    evaluated = pd.read_csv(root / "seed1-result" / files.PREDICTIONS)
    head = pd.read_csv(root / "seed1" / files.HEAD_PREDICTIONS).query("split == 'test'")
    np.testing.assert_array_equal(evaluated["probability"].to_numpy(), head["probability"].to_numpy())
    metrics = json.loads((root / "seed1-result" / files.METRICS).read_text())
    assert metrics["test_images"] == len(head)


def test_a_frozen_evaluation_loads_no_backend(frozen_run, processed_dataset, tmp_path):
    """The head's predictions are read from a CSV: the evaluate task of a frozen training starts no TensorFlow."""
    root, _ = frozen_run
    script = ("import sys; from cxr.results.evaluate import evaluate; "
              "evaluate(sys.argv[1], sys.argv[2], sys.argv[3], samples=10); "
              "print(sorted({'tensorflow', 'keras', 'jax'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", script, str(processed_dataset), str(root / "seed1"),
                           str(tmp_path / "result")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]" and "the head's predictions on the cached features" in done.stderr
    assert (tmp_path / "result" / files.PREDICTIONS).is_file()


def test_damaged_head_predictions_are_one_clear_error(frozen_run, processed_dataset, tmp_path):
    import shutil

    from cxr.errors import UserError
    from cxr.results.evaluate import evaluate

    root, _ = frozen_run
    copy = tmp_path / "model"
    shutil.copytree(root / "seed1", copy)
    (copy / files.HEAD_PREDICTIONS).write_text("split,patient_id,source,label,probability\ntest,p,s,1,7.5\n")
    with pytest.raises(UserError, match="head_predictions.csv is damaged"):
        evaluate(processed_dataset, copy, tmp_path / "result", samples=10)


def test_a_second_seed_reuses_the_cache_without_rewriting_it(frozen_run, processed_dataset, capfd):
    root, first = frozen_run
    cache = Path(first["features"]["folder"])
    before = _stamps(cache)
    second = train(processed_dataset, root / "seed2", TrainSettings(epochs=2, seed=2, **FROZEN),
                   checkpoint=root / "checkpoints" / "seed2")
    assert f"reusing cached features {cache}" in capfd.readouterr().err
    assert second["features"]["folder"] == str(cache) and second["features"]["reused"] is True
    assert second["feature_seconds"] == 0
    assert _stamps(cache) == before  # same inodes and modification times: not rewritten
    assert not list(cache.parent.glob("*.partial-*"))
    head = pd.read_csv(root / "seed2" / files.HEAD_PREDICTIONS)
    assert not np.allclose(head["probability"], pd.read_csv(root / "seed1" / files.HEAD_PREDICTIONS)["probability"])


@pytest.mark.timeout(600)  # two `cxr train` processes
def test_a_frozen_training_killed_during_its_heads_training_ends_as_the_uninterrupted_one(frozen_run,
                                                                                          processed_dataset, tmp_path):
    """kill -9 the same command as frozen_run's training right after the head's first epoch, and run it again:
    the remaining epochs read the batches and dropout draws the uninterrupted training read, so the history and
    the head's predictions are frozen_run's."""
    root, _ = frozen_run
    options = {**FROZEN, "epochs": 3, "seed": 1}
    args = ["train", "--data", str(processed_dataset), "--out", str(tmp_path / "run"),
            "--checkpoint", str(tmp_path / "checkpoint"), "--features", str(root / "checkpoints" / "features"),
            *[str(v) for name, value in options.items() for v in (flag(name), value)]]
    killed = train_killed_after_epoch(args, epoch=1)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = subprocess.run([CXR, *args], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming MobileNet after epoch 1" in resumed.stderr and "reusing cached features" in resumed.stderr
    columns = ["loss", "accuracy", "val_loss", "val_accuracy"]
    history, uninterrupted = (artifacts.read_history(folder / files.HISTORY) for folder in (tmp_path / "run",
                                                                                             root / "seed1"))
    np.testing.assert_allclose(history[columns].to_numpy(), uninterrupted[columns].to_numpy(), rtol=1e-5)
    head, expected = (pd.read_csv(folder / files.HEAD_PREDICTIONS) for folder in (tmp_path / "run", root / "seed1"))
    np.testing.assert_allclose(head["probability"], expected["probability"], atol=1e-6)


def test_the_pipelines_export_pairs_each_result_with_its_own_regimes_model(frozen_run, processed_dataset, tmp_path):
    """One backbone and seed in both regimes: the aggregate step's export must not take the frozen training's
    evaluation for the fine-tuned one's (or the other way round)."""
    from cxr.results.evaluate import evaluate
    from cxr.serving.export import export_best_of

    root, _ = frozen_run
    train(processed_dataset, tmp_path / "finetune", TrainSettings(epochs=1, seed=1, **{**FROZEN, "regime": "finetune"}))
    evaluate(processed_dataset, tmp_path / "finetune", tmp_path / "finetune-result", samples=10)
    models, results = [root / "seed1", tmp_path / "finetune"], [root / "seed1-result", tmp_path / "finetune-result"]
    for order in (1, -1):
        out = tmp_path / f"export{order}"
        assert export_best_of(models[::order], results[::-order], out) == "MobileNet"
        exported = json.loads((out / "cxr_export.json").read_text())
        chosen = results[models.index(Path(exported["model_dir"]))]
        threshold = json.loads((chosen / files.METRICS).read_text())["thresholds"]["validation"]
        assert exported["threshold"] == threshold  # the threshold of that model's own evaluation


def test_the_regimes_never_share_a_checkpoint(processed_dataset, tmp_path):
    from cxr.errors import UserError

    train(processed_dataset, tmp_path / "run", TrainSettings(epochs=1, **FROZEN))
    (tmp_path / "run" / files.TRAIN_METRICS).unlink()
    with pytest.raises(UserError, match="other settings .*regime"):
        train(processed_dataset, tmp_path / "run", TrainSettings(epochs=1, **{**FROZEN, "regime": "finetune"}))


def _cli(data: Path, out: Path, backbone: str, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--backbone", backbone, "--image-size", "32", "--weights", "none",
            "--batch-size", "4", "--epochs", "2", "--device", "cpu", "--out", str(out), "--regime", "frozen",
            *extra]


# `cxr train ARGS` killed with SIGKILL once the first split's features are written into the partial cache folder:
# an extraction preempted at a known point, so that the test does not depend on how fast the machine is.
KILLED_AFTER_FIRST_SPLIT = """
import os, signal, sys
from cxr.cli import main
from cxr.training import frozen

extract_split = frozen._extract_split

def extract_split_then_die(*args, **kwargs):
    extract_split(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)

frozen._extract_split = extract_split_then_die
sys.exit(main(sys.argv[1:]))
"""


# DINOv2Small at full size (22 M parameters, 2 x 2 patches at 28 px): the keras-hub path through the same cache.
@pytest.mark.parametrize("backbone", ["VGG16", pytest.param("DINOv2Small", marks=pytest.mark.slow)])
def test_a_training_killed_while_extracting_is_run_again_to_a_sound_cache(backbone, processed_dataset, tmp_path):
    """kill -9 a real `cxr train --regime frozen` once its partial cache folder holds features, then run it
    again: the leftover is cleared, the features are extracted anew and the training finishes."""
    features = tmp_path / "features"
    command = _cli(processed_dataset, tmp_path / "run", backbone, "--features", str(features))
    first = subprocess.run([sys.executable, "-c", KILLED_AFTER_FIRST_SPLIT, *command], cwd=ROOT,
                           capture_output=True, text=True)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    partial = list(features.glob("*.partial-*"))
    assert len(partial) == 1 and any(p.suffix == ".npy" for p in partial[0].iterdir())
    assert not [p for p in features.iterdir() if p.is_dir() and "." not in p.name]  # no finished cache

    second = subprocess.run([CXR, *command], capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"extracting {backbone} features" in second.stderr and "reusing" not in second.stderr
    metrics = json.loads((tmp_path / "run" / files.TRAIN_METRICS).read_text())
    cache = Path(metrics["features"]["folder"])
    assert fc.problem(cache, fc.FeatureKey(**metrics["features"]["key"])) is None
    assert not list(features.glob("*.partial-*"))
    assert metrics["feature_seconds"] > 0 and (tmp_path / "run" / files.MODEL).stat().st_size > 0


def test_freeze_backbone_gave_way_to_the_regime(processed_dataset, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--data", str(processed_dataset), "--backbone", "mobilenet", "--out", str(tmp_path / "r"),
              "--freeze-backbone"])
    assert "unrecognized arguments: --freeze-backbone" in capsys.readouterr().err
    assert main(["train", "--data", str(processed_dataset), "--backbone", "mobilenet", "--out", str(tmp_path / "r"),
                 "--regime", "linear"]) == 2
    assert not (tmp_path / "r").exists()
