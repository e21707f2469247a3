"""Damaged and implausible artifacts, as a user meets them: the real command on a file written wrong ends in exit
status 2 and one line naming the file and what is wrong (cxr.artifacts), never a traceback or a number computed
from it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr import artifacts, files
from cxr.cli import main
from cxr.errors import UserError
from tests.test_report import TEST_FILMS, VAL_FILMS, scores, write_result


def one_error_line(capsys, command: str, *expected: str) -> str:
    """The single `cxr COMMAND: error: ...` line on stderr, holding every `expected` text."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"cxr {command}: error: ")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(lines), lines
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def result(tmp_path) -> Path:
    """One result folder as `cxr evaluate` writes it (probabilities given, no training)."""
    return write_result(tmp_path / "result", "ResNet50", 42, scores(TEST_FILMS, 2, 1), scores(VAL_FILMS, 2, 2))


def report(result: Path, tmp_path: Path) -> int:
    return main(["report", str(result), "--out", str(tmp_path / "report")])


def rewrite_predictions(result: Path, change) -> Path:
    path = result / files.PREDICTIONS
    change(pd.read_csv(path)).to_csv(path, index=False)
    return path


def test_report_names_a_nan_probability(result, tmp_path, capsys):
    path = rewrite_predictions(result, lambda frame: frame.assign(
        probability=frame["probability"].where(frame.index != 3, np.nan)))
    assert report(result, tmp_path) == 2
    one_error_line(capsys, "report", str(path), "probability on line 5 is empty or NaN", "finite number in [0, 1]")
    assert not (tmp_path / "report" / files.LEADERBOARD_CSV).exists()


def test_report_names_predictions_without_rows(result, tmp_path, capsys):
    path = rewrite_predictions(result, lambda frame: frame.iloc[:0])
    assert report(result, tmp_path) == 2
    one_error_line(capsys, "report", str(path), "has no rows")


def test_report_names_predictions_without_a_probability_column(result, tmp_path, capsys):
    path = rewrite_predictions(result, lambda frame: frame.drop(columns="probability"))
    assert report(result, tmp_path) == 2
    one_error_line(capsys, "report", str(path), "missing column(s) probability")


def test_report_refuses_a_probability_above_one(result, tmp_path, capsys):
    path = rewrite_predictions(result, lambda frame: frame.assign(
        probability=frame["probability"].where(frame.index != 0, 1.7)))
    assert report(result, tmp_path) == 2
    one_error_line(capsys, "report", str(path), "probability on line 2 is 1.7", "in [0, 1]")


def test_report_refuses_test_films_of_one_class(result, tmp_path, capsys):
    path = rewrite_predictions(result, lambda frame: frame[frame["label"] == 1])
    assert report(result, tmp_path) == 2
    one_error_line(capsys, "report", str(path), "one class only (PNEUMONIA)", "ROC AUC")


def test_report_names_a_label_that_is_not_a_class(result, tmp_path, capsys):
    path = rewrite_predictions(result, lambda frame: frame.assign(label=frame["label"].where(frame.index != 1, 2)))
    assert report(result, tmp_path) == 2
    one_error_line(capsys, "report", str(path), "label on line 3 is 2")


def test_report_names_an_empty_validation_file(result, tmp_path, capsys):
    (result / files.VAL_PREDICTIONS).write_text("")
    assert report(result, tmp_path) == 2
    one_error_line(capsys, "report", str(result / files.VAL_PREDICTIONS), "is empty")


def test_report_names_a_training_record_without_its_seed(result, tmp_path, capsys):
    path = result / files.TRAIN_METRICS
    trained = json.loads(path.read_text())
    del trained["settings"]["seed"]
    path.write_text(json.dumps(trained))
    assert report(result, tmp_path) == 2
    one_error_line(capsys, "report", str(path), "has no settings.seed")


def test_report_refuses_a_regime_the_training_does_not_have(result, tmp_path, capsys):
    path = result / files.METRICS
    path.write_text(json.dumps({**json.loads(path.read_text()), "regime": "frozen"}))
    assert report(result, tmp_path) == 2
    one_error_line(capsys, "report", str(path), "regime frozen", "finetune")
    path.write_text(json.dumps({**json.loads(path.read_text()), "regime": "partly"}))
    assert report(result, tmp_path) == 2
    one_error_line(capsys, "report", str(path), "regime is 'partly'", "finetune, frozen")


@pytest.fixture
def model_and_result(evaluated_results, tmp_path) -> tuple[Path, Path]:
    """A trained model (never changed) and a copy of its result folder, to damage."""
    copy = tmp_path / "result"
    shutil.copytree(evaluated_results["MobileNet"], copy)
    return evaluated_results["MobileNet"].parent / "MobileNet-model", copy


def predict(model_and_result, synthetic_archive) -> int:
    model, result = model_and_result
    film = sorted(synthetic_archive.rglob("*.jpeg"))[0]
    return main(["predict", "--model", str(model), "--result", str(result), str(film)])


def write_metrics(result: Path, change) -> Path:
    path = result / files.METRICS
    path.write_text(change(json.loads(path.read_text())))
    return path


def test_predict_names_an_empty_metrics_file(model_and_result, synthetic_archive, capsys):
    path = write_metrics(model_and_result[1], lambda metrics: "")
    assert predict(model_and_result, synthetic_archive) == 2
    one_error_line(capsys, "predict", str(path), "damaged or empty")


def test_predict_names_metrics_without_the_validation_threshold(model_and_result, synthetic_archive, capsys):
    def drop(metrics: dict) -> str:
        del metrics["thresholds"]["validation"]
        return json.dumps(metrics)

    path = write_metrics(model_and_result[1], drop)
    assert predict(model_and_result, synthetic_archive) == 2
    one_error_line(capsys, "predict", str(path), "has no thresholds.validation")


def test_predict_names_metrics_holding_a_list(model_and_result, synthetic_archive, capsys):
    path = write_metrics(model_and_result[1], lambda metrics: json.dumps([metrics]))
    assert predict(model_and_result, synthetic_archive) == 2
    one_error_line(capsys, "predict", str(path), "expected a JSON object")


@pytest.mark.parametrize("threshold", ["7.5", "NaN", "-0.1", "Infinity", '"0.5"'])
def test_predict_refuses_a_validation_threshold_that_is_no_probability(threshold, model_and_result,
                                                                       synthetic_archive, capsys):
    def replace(metrics: dict) -> str:
        metrics["thresholds"]["validation"] = "THRESHOLD"
        return json.dumps(metrics).replace('"THRESHOLD"', threshold)

    path = write_metrics(model_and_result[1], replace)
    assert predict(model_and_result, synthetic_archive) == 2
    one_error_line(capsys, "predict", str(path), "thresholds.validation is", "expected a finite number in [0, 1]")


def test_predict_names_a_damaged_preprocessing_record(model_and_result, synthetic_archive, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(model_and_result[0], model)
    (model / files.PREPROCESSING).write_text(json.dumps({"processed_size": 40}))
    assert predict((model, model_and_result[1]), synthetic_archive) == 2
    one_error_line(capsys, "predict", str(model / files.PREPROCESSING), "has no image_size")


def test_what_evaluate_writes_passes_its_own_checks(evaluated_results):
    """The loaders accept every file a real training and evaluation write (the checks are not stricter than
    the producers)."""
    folder = evaluated_results["VGG16"]
    assert artifacts.read_metrics(folder / files.METRICS)["regime"] == "finetune"
    assert artifacts.read_train_metrics(folder / files.TRAIN_METRICS)["settings"]["regime"] == "finetune"
    test = artifacts.read_predictions(folder / files.PREDICTIONS)
    assert test["probability"].between(0, 1).all() and set(test["label"]) == {0, 1}
    assert len(artifacts.read_val_predictions(folder / files.VAL_PREDICTIONS))
    assert len(artifacts.read_history(folder / files.HISTORY)) == 1
    assert len(artifacts.read_roc(folder / files.ROC)) >= 2
    assert artifacts.read_preprocessing(folder.parent / "VGG16-model" / files.PREPROCESSING) == {
        "processed_size": 40, "image_size": 32}


def test_the_data_folder_files_are_checked(processed_dataset, tmp_path):
    manifest = artifacts.read_manifest(processed_dataset / files.MANIFEST)
    assert set(manifest["split"]) == {"train", "val", "test"}
    stats = artifacts.read_stats(processed_dataset / files.STATS)
    assert sum(stats["counts"]["test"].values()) == (manifest["split"] == "test").sum()
    broken = tmp_path / files.MANIFEST
    manifest.assign(split=manifest["split"].replace("val", "validation")).to_csv(broken, index=False)
    with pytest.raises(UserError, match=r"manifest.csv: split on line \d+ is 'validation'"):
        artifacts.read_manifest(broken)
    counts = json.loads((processed_dataset / files.STATS).read_text())
    counts["counts"]["test"]["NORMAL"] = -1
    (tmp_path / files.STATS).write_text(json.dumps(counts))
    with pytest.raises(UserError, match=r"stats.json: counts.test.NORMAL is -1"):
        artifacts.read_stats(tmp_path / files.STATS)


def test_a_number_is_read_back_exactly_as_it_was_written(tmp_path):
    # pandas' default parser reads this epoch time, seen in CI, one ULP low: a resumed history.csv would then
    # disagree with the checkpoint it was resumed from.
    seconds = 11.390343908999057
    path = tmp_path / files.HISTORY
    pd.DataFrame({"epoch": [1], "loss": [0.5], "accuracy": [0.5], "val_loss": [0.5], "val_accuracy": [0.5],
                  "seconds": [seconds]}).to_csv(path, index=False)
    assert artifacts.read_history(path)["seconds"].iloc[0] == seconds


def test_a_failure_record_with_a_seed_that_is_no_number_is_one_line(tmp_path, capsys):
    folder = tmp_path / "failed"
    folder.mkdir()
    (folder / files.FAILURE).write_text(json.dumps({"backbone": "VGG16", "seed": "first", "stage": "train",
                                                    "reason": "killed"}))
    assert main(["report", str(folder), "--out", str(tmp_path / "report")]) == 2
    one_error_line(capsys, "report", str(folder / files.FAILURE), "is not a failure record", "seed")
