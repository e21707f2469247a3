import json

import pandas as pd
import pytest

from cxr.cli import main
from cxr.errors import UserError
from cxr.training.train import TrainSettings, class_weights, format_duration, train

TINY = dict(backbone="mobilenet", image_size=32, weights="none", batch_size=16, learning_rate=1e-3, patience=3)


def test_class_weights_balance_the_classes():
    weights = class_weights({"NORMAL": 1341, "PNEUMONIA": 3875})
    assert weights[0] * 1341 == pytest.approx(weights[1] * 3875)
    assert weights[0] == pytest.approx(5216 / 2682)


def test_duration_reads_like_the_seed():
    assert format_duration(2023.2) == "0:33:43"
    assert format_duration(3610.6) == "1:00:11"


def test_training_writes_model_history_and_metrics(processed_dataset, tmp_path):
    metrics = train(processed_dataset, tmp_path / "run", TrainSettings(epochs=2, **TINY))
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert list(history.columns) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds"]
    assert list(history["epoch"]) == [1, 2] and (history["seconds"] > 0).all()
    saved = json.loads((tmp_path / "run" / "train_metrics.json").read_text())
    assert saved == metrics
    assert metrics["backbone"] == "MobileNet" and metrics["epochs_run"] == 2 and metrics["device"] == "CPU"
    assert metrics["mixed_precision"] is False and metrics["xla"] is False  # auto: off without a GPU
    assert metrics["learning_time"] == format_duration(history["seconds"].sum())
    assert metrics["best"]["val_loss"] == history["val_loss"].min()
    assert metrics["settings"]["learning_rate"] == 1e-3
    assert (tmp_path / "run" / "model.keras").stat().st_size > 0


def test_an_interrupted_training_resumes_from_its_last_epoch(processed_dataset, tmp_path, monkeypatch):
    import cxr.training.train as training

    class Preempted(Exception):
        pass

    original = training.ResumableTraining.on_epoch_end

    def preempt_after_epoch_2(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch + 1 == 2:
            raise Preempted

    monkeypatch.setattr(training.ResumableTraining, "on_epoch_end", preempt_after_epoch_2)
    with pytest.raises(Preempted):
        train(processed_dataset, tmp_path / "run", TrainSettings(epochs=3, **TINY))
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["epochs_done"] == 2 and not (tmp_path / "run" / "model.keras").exists()

    trained_epochs = []

    def record(self, epoch, logs=None):
        trained_epochs.append(epoch + 1)
        original(self, epoch, logs)

    monkeypatch.setattr(training.ResumableTraining, "on_epoch_end", record)
    metrics = train(processed_dataset, tmp_path / "run", TrainSettings(epochs=3, **TINY))
    assert trained_epochs == [3]  # epochs 1 and 2 were not trained again
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3] and metrics["epochs_run"] == 3
    assert history["seconds"].iloc[:2].tolist() == [r["seconds"] for r in state["history"]]


def test_a_checkpoint_of_other_settings_is_not_resumed(processed_dataset, tmp_path):
    train(processed_dataset, tmp_path / "run", TrainSettings(epochs=1, **TINY))
    (tmp_path / "run" / "train_metrics.json").unlink()
    with pytest.raises(UserError, match="other settings"):
        train(processed_dataset, tmp_path / "run", TrainSettings(epochs=1, **{**TINY, "dense_units": 8}))


def test_a_finished_training_is_reused_not_repeated(processed_dataset, tmp_path):
    first = train(processed_dataset, tmp_path / "run", TrainSettings(epochs=1, **TINY))
    assert train(processed_dataset, tmp_path / "run", TrainSettings(epochs=1, **TINY)) == first


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


def test_pipeline_checkpoints_are_per_run_and_backbone_or_temporary(tmp_path):
    from cxr.training.train import pipeline_checkpoint

    assert pipeline_checkpoint(str(tmp_path), "run-7", "resnet50") == tmp_path / "run-7" / "resnet50"
    temporary = pipeline_checkpoint("", "run-7", "VGG16")
    assert temporary.parts[-2:] == ("run-7", "vgg16") and not temporary.is_relative_to(tmp_path)


def test_headline_training_metrics_are_the_best_epoch_and_the_costs():
    from cxr.training.train import headline_metrics

    metrics = {"best": {"loss": 0.123456, "accuracy": 0.9, "val_loss": 0.2, "val_accuracy": 0.85},
               "epochs_run": 7, "best_epoch": 4, "learning_time_seconds": 61.234, "images_per_second": 812.66}
    assert headline_metrics(metrics) == {"loss": 0.1235, "accuracy": 0.9, "val_loss": 0.2, "val_accuracy": 0.85,
                                         "epochs_run": 7.0, "best_epoch": 4.0, "learning_time_seconds": 61.23,
                                         "images_per_second": 812.66}
