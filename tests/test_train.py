import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cxr import artifacts
from cxr.cli import main
from cxr.errors import UserError
from cxr.training.train import TrainSettings, class_weights, format_duration, train
from tests.conftest import TINY_TRAINING as TINY
from tests.conftest import train_killed_after_epoch


def test_class_weights_balance_the_classes():
    weights = class_weights({"NORMAL": 1341, "PNEUMONIA": 3875})
    assert weights[0] * 1341 == pytest.approx(weights[1] * 3875)
    assert weights[0] == pytest.approx(5216 / 2682)


def test_duration_reads_like_the_seed():
    assert format_duration(2023.2) == "0:33:43"
    assert format_duration(3610.6) == "1:00:11"


def test_training_writes_model_history_and_metrics(tiny_training):
    run, metrics = tiny_training
    history = artifacts.read_history(run / "history.csv")
    assert list(history.columns) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds"]
    assert list(history["epoch"]) == [1, 2] and (history["seconds"] > 0).all()
    saved = json.loads((run / "train_metrics.json").read_text())
    assert saved == metrics
    assert metrics["backbone"] == "MobileNet" and metrics["epochs_run"] == 2 and metrics["device"] == "CPU"
    assert metrics["mixed_precision"] is False and metrics["xla"] is False  # auto: off without a GPU
    assert metrics["learning_time"] == format_duration(history["seconds"].sum())
    assert metrics["best"]["val_loss"] == history["val_loss"].min()
    assert metrics["settings"]["learning_rate"] == 1e-3
    assert (run / "model.keras").stat().st_size > 0


def test_a_checkpoint_of_other_settings_is_not_resumed(processed_dataset, tiny_training, tmp_path):
    shutil.copytree(tiny_training[0], tmp_path / "run")
    (tmp_path / "run" / "train_metrics.json").unlink()
    with pytest.raises(UserError, match="other settings"):
        train(processed_dataset, tmp_path / "run", TrainSettings(epochs=2, **{**TINY, "dense_units": 8}))


def test_a_finished_training_is_reused_not_repeated(processed_dataset, tiny_training):
    run, first = tiny_training
    model = (run / "model.keras").stat().st_mtime_ns
    assert train(processed_dataset, run, TrainSettings(epochs=2, **TINY)) == first
    assert (run / "model.keras").stat().st_mtime_ns == model  # reused: nothing trained or saved again


@pytest.mark.parametrize(("flag", "value"), [("--epochs", "0"), ("--dropout", "1.5"), ("--lr", "-1"),
                                             ("--backbone", "alexnet"), ("--image-size", "-5")])
def test_bad_settings_fail_with_one_line_naming_them(processed_dataset, tmp_path, capsys, flag, value):
    args = ["train", "--data", str(processed_dataset), "--backbone", "mobilenet", "--out", str(tmp_path / "run"),
            "--weights", "none"]
    args = [*args, flag, value] if flag != "--backbone" else [*args[:4], value, *args[5:]]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and (flag in error or value in error)
    assert not (tmp_path / "run").exists()


def test_pipeline_checkpoints_are_per_run_backbone_regime_head_learning_rate_and_seed_or_temporary(tmp_path):
    from cxr.training.plan import pipeline_checkpoint, pipeline_features

    assert (pipeline_checkpoint(str(tmp_path), "run-7", "resnet50", "frozen", 1e-3, 3)
            == tmp_path / "run-7" / "resnet50-frozen-lr0.001-seed3")
    # Two candidates of one row never share a checkpoint.
    assert (pipeline_checkpoint(str(tmp_path), "run-7", "resnet50", "frozen", 1e-4, 3)
            != pipeline_checkpoint(str(tmp_path), "run-7", "resnet50", "frozen", 1e-3, 3))
    temporary = pipeline_checkpoint("", "run-7", "VGG16", "finetune", 1e-5, 42)
    assert temporary.parts[-2:] == ("run-7", "vgg16-finetune-lr1e-05-seed42") and not temporary.is_relative_to(tmp_path)
    assert (pipeline_checkpoint(str(tmp_path), "run-7", "resnet50", "frozen", 1e-3, 3, "linear")
            == tmp_path / "run-7" / "resnet50-frozen-linear-lr0.001-seed3")
    # Feature caches outlive a run: a later run on the same data reuses them.
    assert pipeline_features(str(tmp_path)) == tmp_path / "features" and pipeline_features("") is None


def test_dashboard_training_scalars_are_the_best_epoch_and_the_costs():
    from cxr.training.plan import dashboard_scalars

    metrics = {"best": {"loss": 0.123456, "accuracy": 0.9, "val_loss": 0.2, "val_accuracy": 0.85},
               "epochs_run": 7, "best_epoch": 4, "learning_time_seconds": 61.234, "images_per_second": 812.66}
    assert dashboard_scalars(metrics) == {"loss": 0.1235, "accuracy": 0.9, "val_loss": 0.2, "val_accuracy": 0.85,
                                          "epochs_run": 7.0, "best_epoch": 4.0, "learning_time_seconds": 61.23,
                                          "images_per_second": 812.66}


CXR = str(Path(sys.executable).with_name("cxr"))


def _cli_args(data, **overrides) -> list[str]:
    """TINY_TRAINING on the command line: what the tiny_training fixture trains in-process."""
    options = {"--backbone": TINY["backbone"], "--image-size": TINY["image_size"], "--weights": TINY["weights"],
               "--batch-size": TINY["batch_size"], "--lr": TINY["learning_rate"], "--patience": TINY["patience"],
               "--epochs": "2", "--device": "cpu", **overrides}
    return ["train", "--data", str(data), *[str(v) for pair in options.items() for v in pair]]


@pytest.mark.timeout(600)  # two `cxr train` processes
def test_a_killed_training_resumes_into_a_new_output_folder_as_the_same_training(processed_dataset, tiny_training,
                                                                                   tmp_path):
    """kill -9 after the first finished epoch, then the same checkpoint with a fresh --out (a retried pod): the
    second epoch reads the batches and dropout draws the uninterrupted training read, so the resumed training ends
    where tiny_training (the same command, never interrupted) ended."""
    args = _cli_args(processed_dataset, **{"--checkpoint": tmp_path / "ckpt"})
    first = train_killed_after_epoch([*args, "--out", str(tmp_path / "a")], epoch=1)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    state = json.loads((tmp_path / "ckpt" / "state.json").read_text())
    assert state["epochs_done"] == 1 and not (tmp_path / "a" / "model.keras").exists()

    second = subprocess.run([CXR, *args, "--out", str(tmp_path / "b")], capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resuming MobileNet after epoch 1" in second.stderr
    history = artifacts.read_history(tmp_path / "b" / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    assert history["seconds"].iloc[:1].tolist() == [row["seconds"] for row in state["history"]]
    uninterrupted = artifacts.read_history(tiny_training[0] / "history.csv")
    columns = ["loss", "accuracy", "val_loss", "val_accuracy"]
    np.testing.assert_allclose(history[columns].to_numpy(), uninterrupted[columns].to_numpy(), rtol=1e-5)
    assert (tmp_path / "b" / "model.keras").stat().st_size > 0
    assert json.loads((tmp_path / "b" / "train_metrics.json").read_text())["epochs_run"] == 2


def test_asking_for_a_gpu_without_one_stops_at_once_with_one_line(processed_dataset, tmp_path, capsys):
    assert main([*_cli_args(processed_dataset, **{"--device": "gpu"}), "--out", str(tmp_path / "run")]) == 2
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("cxr train")]
    assert len(error) == 1 and "--device gpu: no GPU is visible" in error[0]
    assert not (tmp_path / "run").exists()


def test_a_diverging_training_stops_with_one_line_and_no_model(processed_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_cli_args(processed_dataset, **{"--lr": "1e38", "--epochs": "2"}) + ["--out", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("cxr train: error: training MobileNet diverged") and "lower --lr" in error
    assert not (out / "model.keras").exists()
    assert main(["train", "--data", str(processed_dataset), "--backbone", "mobilenet", "--out", str(out),
                 "--lr", "inf"]) == 2
    assert "--lr must be a positive number" in capsys.readouterr().err


@pytest.mark.parametrize(("flag", "value", "message"), [("--image-size", "10000", "up to 1024"),
                                                        ("--batch-size", "100000", "at most 1024")])
def test_absurd_sizes_are_refused_before_any_work(processed_dataset, tmp_path, capsys, flag, value, message):
    assert main(_cli_args(processed_dataset, **{flag: value}) + ["--out", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_two_trainings_into_one_folder_are_refused_not_raced(processed_dataset, tmp_path, capsys):
    args = [*_cli_args(processed_dataset, **{"--epochs": "30", "--patience": "30"}), "--out", str(tmp_path / "run")]
    first = subprocess.Popen([CXR, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "run" / ".cxr-output.json").is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        # The second `cxr train` is this process (the lock is between processes): one TensorFlow start fewer.
        assert main(args) == 2 and "being written by another cxr process" in capsys.readouterr().err
        assert first.poll() is None  # the first one goes on, untouched
    finally:
        first.kill()
        first.wait()
