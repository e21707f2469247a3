"""Results that cannot be mixed up, and a failed step that does not poison its folder, as a user meets them through
the command line: every output records what it was made from; artifacts that do not belong together are refused
in one line naming both; a bad input is refused before the output folder is claimed, so the corrected command
runs into the same folder; an output file appears only once complete."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cxr import files
from cxr.cli import main
from cxr.outputs import RECORD, new_file
from tests.conftest import TINY_IMAGE_SIZE

ROOT = Path(__file__).resolve().parent.parent
# The module's fixtures train three tiny models and explain two (about 3 minutes on 2 cores), inside the first
# test that asks for each.
pytestmark = pytest.mark.timeout(900)


def cli(*argv) -> tuple[int, str]:
    """`cxr ARGV...` as a user runs it: the exit status and what it printed on stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = main([str(a) for a in argv])
    return status, err.getvalue()


def one_error_line(err: str, *expected: str) -> str:
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err[-3000:]
    for text in expected:
        assert str(text) in lines[0], lines[0]
    assert "Traceback" not in err
    return lines[0]


def records(folder: Path) -> dict:
    path = Path(folder) / RECORD
    return json.loads(path.read_text()) if path.is_file() else {}


# --- Artifacts made for these tests: other data, other recipes -------------------------------------------------

@pytest.fixture(scope="module")
def stored_48(raw_dataset, tmp_path_factory) -> Path:
    """The same films and split as the session's data, stored at 48 px instead of 40."""
    out = tmp_path_factory.mktemp("stored48") / "processed"
    assert cli("preprocess", "--raw", raw_dataset, "--out", out, "--image-size", 48, "--val-fraction", 0.2,
               "--seed", 3)[0] == 0
    return out


@pytest.fixture(scope="module")
def other_split(raw_dataset, tmp_path_factory) -> Path:
    """Another dataset at the same stored size: the session's films split with another seed."""
    out = tmp_path_factory.mktemp("other-split") / "processed"
    assert cli("preprocess", "--raw", raw_dataset, "--out", out, "--image-size", TINY_IMAGE_SIZE,
               "--val-fraction", 0.2, "--seed", 5)[0] == 0
    return out


def train_and_evaluate(data: Path, evaluate_on: Path, folder: Path, *options) -> Path:
    """`cxr train` then `cxr evaluate` into one folder, MobileNet at 32 px from scratch."""
    status, err = cli("train", "--data", data, "--backbone", "MobileNet", "--out", folder, "--image-size", 32,
                      "--weights", "none", "--device", "cpu", *options)
    assert status == 0, err[-2000:]
    status, err = cli("evaluate", "--data", evaluate_on, "--model", folder, "--out", folder)
    assert status == 0, err[-2000:]
    return folder


@pytest.fixture(scope="module")
def trained_elsewhere(other_split, processed_dataset, tmp_path_factory) -> Path:
    """MobileNet (seed 43) trained on the other split and evaluated on the session's data: allowed on its own
    (a model may be tested on other data), not as a seed beside one trained on the session's data."""
    return train_and_evaluate(other_split, processed_dataset, tmp_path_factory.mktemp("elsewhere") / "MobileNet",
                              "--epochs", 1, "--seed", 43)


@pytest.fixture(scope="module")
def at_48(stored_48, tmp_path_factory) -> Path:
    """MobileNet (seed 43) trained and evaluated on the 48-px preprocessing."""
    return train_and_evaluate(stored_48, stored_48, tmp_path_factory.mktemp("at48") / "MobileNet",
                              "--epochs", 1, "--seed", 43)


@pytest.fixture(scope="module")
def two_epochs(processed_dataset, evaluated_results, tmp_path_factory) -> dict:
    """MobileNet (seed 44) for two epochs, into one --out: first with --weights naming a whole .keras model, then
    with --weights imagenet and no network, then corrected. Returns what each attempt printed, and the folder."""
    out = tmp_path_factory.mktemp("epochs2") / "MobileNet"
    common = ["train", "--data", processed_dataset, "--backbone", "MobileNet", "--out", out, "--image-size", 32,
              "--device", "cpu", "--epochs", 2, "--seed", 44]
    saved_model = out.parent / "some-model.keras"
    shutil.copyfile(model_of(evaluated_results, "MobileNet") / files.MODEL, saved_model)  # a whole trained model
    whole_model = cli(*common, "--weights", saved_model)
    keras_home = tmp_path_factory.mktemp("keras-home")  # no cached download
    offline = {**os.environ, "PYTHONPATH": str(ROOT), "KERAS_HOME": str(keras_home),
               "HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "NO_PROXY": "",
               "no_proxy": ""}  # port 9 (discard) is closed: every download fails as without network
    no_network = subprocess.run([sys.executable, "-m", "cxr.cli", *map(str, common), "--weights", "imagenet"],
                                env=offline, cwd=ROOT, capture_output=True, text=True, timeout=600)
    corrected = cli(*common, "--weights", "none")
    assert corrected[0] == 0, corrected[1][-2000:]
    status, err = cli("evaluate", "--data", processed_dataset, "--model", out, "--out", out)
    assert status == 0, err[-2000:]
    return {"folder": out, "whole_model": whole_model, "no_network": no_network, "corrected": corrected}


@pytest.fixture(scope="module")
def explained(processed_dataset, synthetic_archive, evaluated_results, tmp_path_factory) -> dict:
    """`cxr explain` of the session's MobileNet into one --out: first with a --lesions file that does not exist,
    then corrected."""
    out = tmp_path_factory.mktemp("explained") / "MobileNet"
    common = ["explain", "--data", processed_dataset, "--model", model_of(evaluated_results, "MobileNet"),
              "--result", evaluated_results["MobileNet"], "--out", out, "--films", 4]
    wrong = cli(*common, "--lesions", synthetic_archive / "no-such-lesions.csv")
    corrected = cli(*common, "--lesions", synthetic_archive / "chest_xray" / files.LESIONS)
    assert corrected[0] == 0, corrected[1][-2000:]
    return {"folder": out, "wrong": wrong, "corrected": corrected}


def model_of(evaluated_results: dict, backbone: str) -> Path:
    return evaluated_results[backbone].parent / f"{backbone}-model"


# --- Every output records what it was made from ----------------------------------------------------------------

def test_synth_marks_its_films_and_ingest_and_preprocess_carry_the_mark(synthetic_archive, raw_dataset,
                                                                         processed_dataset):
    marker = json.loads((synthetic_archive / "chest_xray" / files.SYNTHETIC_MARKER).read_text())
    assert marker["made_by"] == "cxr synth" and marker["seed"] == 7
    assert json.loads((raw_dataset / files.INGEST_MARKER).read_text())["synthetic"] == marker
    assert (raw_dataset / files.SYNTHETIC_MARKER).is_file()  # carried along, so a cached copy still says it
    dataset = json.loads((processed_dataset / files.STATS).read_text())["dataset"]
    assert dataset["synthetic"] is True and dataset["source"] == str(synthetic_archive)
    assert dataset["stored_size"] == TINY_IMAGE_SIZE and len(dataset["fingerprint"]) == 16


def test_a_folder_without_the_mark_is_recorded_as_its_source(synthetic_archive, tmp_path):
    source = tmp_path / "films"
    shutil.copytree(synthetic_archive / "chest_xray", source / "chest_xray")
    (source / "chest_xray" / files.SYNTHETIC_MARKER).unlink()
    assert cli("ingest", "--source", source, "--out", tmp_path / "raw")[0] == 0
    report = json.loads((tmp_path / "raw" / files.INGEST_MARKER).read_text())
    assert report["synthetic"] is None and report["source"] == str(source)


def test_every_output_names_its_data_training_and_model(processed_dataset, evaluated_results, explained):
    model = model_of(evaluated_results, "MobileNet")
    data = json.loads((processed_dataset / files.STATS).read_text())["dataset"]
    trained = json.loads((model / files.TRAIN_METRICS).read_text())
    assert trained["provenance"]["data"]["fingerprint"] == data["fingerprint"]
    assert trained["provenance"]["data"]["stored_size"] == TINY_IMAGE_SIZE
    evaluated = json.loads((evaluated_results["MobileNet"] / files.METRICS).read_text())["provenance"]
    assert evaluated["data"]["fingerprint"] == data["fingerprint"]
    assert evaluated["trained_on"]["fingerprint"] == data["fingerprint"]
    assert (evaluated["model"]["backbone"], evaluated["model"]["seed"], evaluated["model"]["regime"]) == (
        "MobileNet", 42, "finetune")
    assert evaluated["model"]["recipe"]["epochs"] == 1 and "seed" not in evaluated["model"]["recipe"]
    summary = json.loads((explained["folder"] / files.EXPLAIN_SUMMARY).read_text())["provenance"]
    assert summary["model"]["training_id"] == evaluated["model"]["training_id"]
    assert summary["data"]["fingerprint"] == data["fingerprint"]


# --- Combining artifacts that do not belong together -----------------------------------------------------------

def test_predict_refuses_another_models_evaluation(evaluated_results, two_epochs, synthetic_archive, tmp_path):
    film = next((synthetic_archive / "chest_xray" / "test").rglob("*.jpeg"))
    model = model_of(evaluated_results, "MobileNet")
    for other, named in ((evaluated_results["VGG16"], "VGG16"), (two_epochs["folder"], "seed 44")):
        status, err = cli("predict", "--model", model, "--result", other, film, "--out", tmp_path / "p.csv")
        assert status == 2
        one_error_line(err, f"--result {other}", named, f"--model {model}", "MobileNet")
    assert not (tmp_path / "p.csv").exists()


def test_export_refuses_another_models_evaluation(evaluated_results, tmp_path):
    model = model_of(evaluated_results, "MobileNet")
    status, err = cli("export", "--model", model, "--result", evaluated_results["VGG16"], "--out", tmp_path / "x")
    assert status == 2
    one_error_line(err, f"--result {evaluated_results['VGG16']}", "VGG16", f"--model {model}", "MobileNet")
    assert not (tmp_path / "x").exists()


def test_explain_refuses_another_models_evaluation_and_data(processed_dataset, stored_48, other_split,
                                                            evaluated_results, tmp_path):
    model = model_of(evaluated_results, "MobileNet")
    base = ["explain", "--model", model, "--out", tmp_path / "e", "--films", 2]
    status, err = cli(*base, "--data", processed_dataset, "--result", evaluated_results["VGG16"])
    assert status == 2
    one_error_line(err, "VGG16", "MobileNet", f"--model {model}")
    status, err = cli(*base, "--data", stored_48, "--result", evaluated_results["MobileNet"])
    assert status == 2
    one_error_line(err, f"--data {stored_48}", "48 px", f"{TINY_IMAGE_SIZE} px")
    status, err = cli(*base, "--data", other_split, "--result", evaluated_results["MobileNet"])
    assert status == 2
    one_error_line(err, str(other_split), "is not the data", str(evaluated_results["MobileNet"]))
    assert records(tmp_path / "e") == {}


def test_evaluate_refuses_data_of_another_stored_size(stored_48, evaluated_results, tmp_path):
    model = model_of(evaluated_results, "MobileNet")
    status, err = cli("evaluate", "--data", stored_48, "--model", model, "--out", tmp_path / "r")
    assert status == 2
    one_error_line(err, f"--data {stored_48}", "48 px", f"{TINY_IMAGE_SIZE} px", str(model))
    assert not (tmp_path / "r").exists()


def test_report_refuses_a_seed_trained_on_other_data(evaluated_results, trained_elsewhere, tmp_path):
    status, err = cli("report", evaluated_results["MobileNet"], trained_elsewhere, evaluated_results["VGG16"],
                      "--out", tmp_path / "report")
    assert status == 2
    one_error_line(err, "trained on", str(evaluated_results["MobileNet"]), str(trained_elsewhere))
    assert not (tmp_path / "report").exists()


def test_report_refuses_seeds_of_one_row_with_other_settings(evaluated_results, two_epochs, tmp_path):
    status, err = cli("report", evaluated_results["MobileNet"], two_epochs["folder"], "--out", tmp_path / "report")
    assert status == 2
    one_error_line(err, "results of one row", "MobileNet · finetune", "epochs 1 and 2",
                   str(evaluated_results["MobileNet"]), str(two_epochs["folder"]))


def test_report_refuses_results_of_two_preprocessing_sizes(evaluated_results, at_48, tmp_path):
    status, err = cli("report", evaluated_results["VGG16"], at_48, "--out", tmp_path / "report")
    assert status == 2
    one_error_line(err, "two preprocessings", f"{TINY_IMAGE_SIZE} px", "48 px", str(at_48),
                   str(evaluated_results["VGG16"]))


def test_report_refuses_data_and_explanations_of_other_data_or_models(evaluated_results, other_split,
                                                                      trained_elsewhere, processed_dataset,
                                                                      tmp_path):
    results = [evaluated_results["MobileNet"], evaluated_results["VGG16"]]
    status, err = cli("report", *results, "--out", tmp_path / "report", "--data", other_split)
    assert status == 2
    one_error_line(err, f"--data {other_split}", "is not the data", "evaluated on")
    elsewhere = tmp_path / "explained-elsewhere"
    assert cli("explain", "--data", processed_dataset, "--model", trained_elsewhere, "--out", elsewhere,
               "--films", 2)[0] == 0
    status, err = cli("report", *results, "--out", tmp_path / "report", "--explanations", elsewhere)
    assert status == 2
    one_error_line(err, f"--explanations {elsewhere}", "seed 43", "none of the results")
    assert records(tmp_path / "report") == {}


def test_a_folder_with_a_failure_beside_a_complete_result_is_reported_and_said(evaluated_results, tmp_path):
    both = tmp_path / "both"
    shutil.copytree(evaluated_results["MobileNet"], both)
    (both / files.FAILURE).write_text(json.dumps({"backbone": "MobileNet", "seed": 42, "stage": "evaluate",
                                                  "reason": "an earlier attempt ran out of memory"}))
    status, err = cli("report", both, evaluated_results["VGG16"], "--out", tmp_path / "report")
    assert status == 0, err[-2000:]
    assert "beside a complete evaluation" in err
    board = pd.read_csv(tmp_path / "report" / files.LEADERBOARD_CSV)
    assert "MobileNet" in set(board["backbone"])
    markdown = (tmp_path / "report" / files.LEADERBOARD_MD).read_text()
    assert f"Note: {both} holds failure.json" in markdown and "Missing:" not in markdown
    assert "an earlier attempt ran out of memory" in (tmp_path / "report" / files.REPORT_HTML).read_text()
    # An evaluation its record calls unfinished is not a result: the failure stands.
    partial = tmp_path / "partial"
    shutil.copytree(both, partial)
    record = records(partial)
    record["evaluate"]["finished"] = False
    (partial / RECORD).write_text(json.dumps(record))
    assert cli("report", partial, evaluated_results["VGG16"], "--out", tmp_path / "report2")[0] == 0
    assert "Missing: MobileNet (seed 42) failed in evaluate" in (tmp_path / "report2" / files.LEADERBOARD_MD
                                                                 ).read_text()


def test_the_model_card_says_the_films_are_synthetic(evaluated_results, processed_dataset, tmp_path):
    """No explanation, hence no pointing game: the card knows from the data's record, not from lesion boxes."""
    status, err = cli("report", *evaluated_results.values(), "--out", tmp_path / "report", "--data",
                      processed_dataset)
    assert status == 0, err[-2000:]
    html = (tmp_path / "report" / files.REPORT_HTML).read_text()
    card = html[html.index("Model card"):]
    assert "synthetic films from <code>cxr synth</code>" in card and "Kaggle" not in card
    fingerprint = json.loads((processed_dataset / files.STATS).read_text())["dataset"]["fingerprint"]
    assert f"Fingerprint {fingerprint}" in card
    assert f"Every result was evaluated on {processed_dataset.resolve()}" in html


def test_the_model_card_names_the_source_of_other_data(evaluated_results, processed_dataset):
    from cxr.results.model_card import model_card_html

    stats = json.loads((processed_dataset / files.STATS).read_text())
    metrics = {name: json.loads((folder / files.METRICS).read_text()) for name, folder in evaluated_results.items()}
    board = [{"backbone": name, "roc_auc": m["roc_auc"]["value"]} for name, m in metrics.items()]
    folder = {**stats, "dataset": {**stats["dataset"], "synthetic": False, "source": "/data/hospital-b.zip"}}
    card = model_card_html(folder, board, metrics)
    assert "films ingested from <code>/data/hospital-b.zip</code>" in card and "Guangzhou" not in card
    kaggle = model_card_html({**stats, "dataset": {**stats["dataset"], "synthetic": False, "source": "kaggle"}},
                             board, metrics)
    assert "paultimothymooney/chest-xray-pneumonia" in kaggle and "Guangzhou" in kaggle


# --- Explanations the report cannot use -------------------------------------------------------------------------

def test_report_explanations_of_an_unfinished_or_wrong_folder_are_one_line(evaluated_results, explained, tmp_path):
    results = [evaluated_results["MobileNet"], evaluated_results["VGG16"]]
    unfinished = tmp_path / "unfinished"
    shutil.copytree(explained["folder"], unfinished)
    record = records(unfinished)
    record["explain"]["finished"] = False
    (unfinished / RECORD).write_text(json.dumps(record))
    no_heatmaps = tmp_path / "no-heatmaps"
    shutil.copytree(explained["folder"], no_heatmaps)
    (no_heatmaps / files.gradcam_heatmaps("MobileNet")).unlink()
    out = tmp_path / "report"
    for folder, expected in ((unfinished, "did not finish"), (evaluated_results["VGG16"], "holds no explain.json"),
                             (no_heatmaps, "missing"), (tmp_path / "nowhere", "no such folder")):
        status, err = cli("report", *results, "--out", out, "--explanations", folder)
        assert status == 2
        one_error_line(err, str(folder), expected)
    # None of them claimed the folder: the corrected report runs into it.
    status, err = cli("report", *results, "--out", out, "--explanations", explained["folder"])
    assert status == 0, err[-2000:]
    assert "gradcam" in (out / files.REPORT_HTML).read_text().lower()


# --- A failed step leaves its folder free for the corrected command -----------------------------------------------

def test_explain_with_bad_lesions_then_corrected_into_the_same_folder(explained, synthetic_archive):
    status, err = explained["wrong"]
    assert status == 2
    one_error_line(err, "--lesions", "no-such-lesions.csv")
    summary = json.loads((explained["folder"] / files.EXPLAIN_SUMMARY).read_text())
    assert summary["pointing_game"]["films"] > 0


def test_train_with_bad_weights_then_corrected_into_the_same_folder(two_epochs):
    status, err = two_epochs["whole_model"]
    assert status == 2
    one_error_line(err, "--weights", "some-model.keras", "whole saved model")
    assert len(err) < 2000  # the line, not Keras' list of every layer it could not load
    offline = two_epochs["no_network"]
    assert offline.returncode == 2, offline.stderr[-3000:]
    one_error_line(offline.stderr, "--weights imagenet", "could not be downloaded", "MobileNet", "--weights none")
    trained = json.loads((two_epochs["folder"] / files.TRAIN_METRICS).read_text())
    assert trained["settings"]["weights"] == "none" and trained["epochs_run"] == 2
    assert two_epochs["corrected"][0] == 0


def test_ingest_with_a_missing_source_then_corrected_into_the_same_folder(synthetic_archive, tmp_path):
    out = tmp_path / "raw"
    status, err = cli("ingest", "--source", tmp_path / "typo", "--out", out)
    assert status == 2
    one_error_line(err, "typo", "no such file or folder")
    assert cli("ingest", "--source", synthetic_archive, "--out", out)[0] == 0
    assert (out / files.INGEST_MARKER).is_file()


def test_a_claim_that_wrote_nothing_is_forgotten_when_its_command_fails(tmp_path):
    from cxr.errors import UserError
    from cxr.outputs import claim

    with pytest.raises(UserError), claim(tmp_path / "out", "report", {"results": ["a"]}):
        raise UserError("a download failed")
    with claim(tmp_path / "out", "report", {"results": ["b"]}) as output:
        (tmp_path / "out" / "written.txt").write_text("b")
        output.finish()
    assert records(tmp_path / "out")["report"] == {"settings": {"results": ["b"]}, "finished": True}


# --- An output appears only once it is complete -------------------------------------------------------------------

def test_predict_writes_a_film_whose_name_is_not_utf8(evaluated_results, synthetic_archive, tmp_path):
    good = next((synthetic_archive / "chest_xray" / "test").rglob("*.jpeg"))
    odd = Path(os.fsdecode(os.fsencode(tmp_path) + b"/film-\xe9t\xe9.jpeg"))  # Latin-1 bytes, not UTF-8
    shutil.copyfile(good, odd)
    out = tmp_path / "predictions.csv"
    model = model_of(evaluated_results, "MobileNet")
    status, err = cli("predict", "--model", model, "--result", evaluated_results["MobileNet"], odd, good,
                      "--out", out)
    assert status == 0, err[-2000:]
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table["file"]) == [f"{tmp_path}/film-\\xe9t\\xe9.jpeg", str(good)]
    assert table["probability"].iloc[0] == pytest.approx(table["probability"].iloc[1])  # the same bytes
    assert set(table["error"]) == {""}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_a_file_written_in_parts_appears_only_when_complete(tmp_path):
    from cxr.errors import UserError

    target = tmp_path / "out.csv"
    with pytest.raises(RuntimeError), new_file(target) as handle:
        handle.write("file,probability\n")
        raise RuntimeError("the next row cannot be written")
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary part: a rerun is not blocked
    with new_file(target) as handle:
        handle.write("file,probability\nfilm.jpeg,0.5\n")
    assert target.read_text() == "file,probability\nfilm.jpeg,0.5\n"
    with pytest.raises(UserError, match="exists already"), new_file(target) as handle:
        handle.write("never")
    assert target.read_text() == "file,probability\nfilm.jpeg,0.5\n"


# --- The demo checks everything before its first step -----------------------------------------------------------

@pytest.mark.parametrize("arguments, expected", [
    (["--backbones", "MobileNet,NoSuchNet"], "unknown backbone 'NoSuchNet'"),
    (["--per-class", "0"], "--per-class must be between"),
    (["--image-size", "5000"], "--image-size must be 0"),
    (["--regimes", "finetune,sideways"], "unknown regime 'sideways'"),
    (["--learning-rates", "1e-3,fast"], "--learning-rates: 'fast' is not a number"),
    (["--learning-rates", "1e-3,1e-3"], "learning_rates: 0.001 is listed more than once"),
    (["--learning-rates", "1e-3,-1"], "learning_rates: -1.0 is not a positive finite number"),
])
def test_the_demo_refuses_bad_settings_before_its_first_step(arguments, expected, tmp_path, capsys):
    # In this process: the next test runs the demo's command itself, and each start costs seconds of imports.
    from pipelines.local_demo import main as demo

    out = tmp_path / "demo"
    assert demo(["--out", str(out), *arguments]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("demo: error: ")]
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in err, err[-2000:]
    assert not out.exists()  # nothing was synthesized, no folder made


def test_the_demo_into_a_file_is_one_line(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    for out in (a_file, a_file / "below"):
        run = subprocess.run([sys.executable, "-m", "pipelines.local_demo", "--out", str(out)], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-2000:]
        assert run.stderr.strip().splitlines()[-1].startswith(f"demo: error: --out {out}")
    assert a_file.read_text() == "mine"
