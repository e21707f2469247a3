"""Each row's learning rate, chosen on validation alone: real trainings at two learning rates and two seeds
(MobileNet frozen, whose feature cache every one of them shares, so the four cost one forward pass and seconds of
head training each), evaluated into result folders, then reported as `cxr report` reports them."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr import artifacts, files
from cxr.cli import main
from cxr.results import tuning
from cxr.results.collect import gather
from cxr.results.metrics import json_safe, summarize
from cxr.results.report import write_report

RATES = (1e-2, 1e-4)
SEEDS = (1, 2)
TINY = dict(backbone="MobileNet", epochs=1, image_size=32, weights="none", batch_size=16, regime="frozen")
SAMPLES = 20  # bootstrap resamples: the intervals are not what these tests check


@pytest.fixture(scope="module")
def searched(processed_dataset, evaluated_results, tmp_path_factory) -> dict:
    """Result folders: MobileNet frozen at RATES x SEEDS ("frozen"), a frozen one trained for 2 epochs
    ("two_epochs", another recipe), and the session's fine-tuned MobileNet ("finetune", a second row with a budget
    of one)."""
    from cxr.results.evaluate import evaluate
    from cxr.training.train import TrainSettings, train

    root = tmp_path_factory.mktemp("search")
    features = root / "features"

    def trained(name: str, **changes) -> Path:
        train(processed_dataset, root / f"{name}-model", TrainSettings(**{**TINY, **changes}), features=features)
        evaluate(processed_dataset, root / f"{name}-model", root / name, samples=SAMPLES)
        return root / name

    return {"frozen": [trained(f"frozen-lr{rate:g}-seed{seed}", learning_rate=rate, seed=seed)
                       for rate in RATES for seed in SEEDS],
            "finetune": evaluated_results["MobileNet"],
            "two_epochs": trained("two-epochs", learning_rate=RATES[1], seed=SEEDS[0], epochs=2)}


def validation_auc(folder: Path) -> float:
    return artifacts.read_metrics(folder / files.METRICS)["validation"]["roc_auc"]


def test_the_report_ranks_the_row_once_at_the_rate_with_the_best_validation_auc(searched, tmp_path):
    written, missing = write_report(searched["frozen"], tmp_path / "report", samples=SAMPLES)
    assert not missing
    # What the choice must be, from each seed's metrics.json alone.
    mean_auc = {rate: np.mean([validation_auc(f) for f in searched["frozen"] if f"lr{rate:g}-" in f.name])
                for rate in RATES}
    best = max(RATES, key=lambda rate: (mean_auc[rate], -rate))

    candidates = pd.read_csv(written[files.TUNING_CSV])
    assert candidates.columns.tolist() == tuning.COLUMNS
    assert sorted(candidates["learning_rate"]) == sorted(RATES) and (candidates["seeds"] == 2).all()
    assert candidates.loc[candidates["chosen"], "learning_rate"].tolist() == [best]
    for rate in RATES:
        row = candidates[candidates["learning_rate"] == rate].iloc[0]
        assert row["val_roc_auc"] == pytest.approx(mean_auc[rate])

    board = pd.read_csv(written[files.LEADERBOARD_CSV])
    assert board[["backbone", "regime"]].values.tolist() == [["MobileNet", "frozen"]]  # one row, no ensemble
    assert board.loc[0, "learning_rate"] == best and board.loc[0, "candidates"] == 2 and board.loc[0, "seeds"] == 2

    assert written[files.TUNING_PLOT].stat().st_size > 0
    html = written[files.REPORT_HTML].read_text()
    assert "The learning rate, chosen on validation" in html and "Equal tuning budgets" in html
    assert files.TUNING_PLOT.removesuffix(".png") in html  # the graph, embedded
    assert "among 2 learning rates" in written[files.LEADERBOARD_MD].read_text()


def relabel(folder: Path, out: Path, labels: dict[str, int], split_file: str) -> Path:
    """A copy of the result folder whose films of one split (predictions.csv: test; val_predictions.csv:
    validation) carry `labels` (source -> label), evaluated again from its probabilities as `cxr evaluate`
    does (metrics.json from summarize, its provenance kept)."""
    shutil.copytree(folder, out)
    frames = {name: artifacts.read_predictions(out / name) for name in (files.PREDICTIONS, files.VAL_PREDICTIONS)}
    frames[split_file] = frames[split_file].assign(label=frames[split_file]["source"].map(labels))
    frames[split_file].to_csv(out / split_file, index=False)
    metrics = json.loads((out / files.METRICS).read_text())
    metrics.update(json_safe(summarize(frames[files.PREDICTIONS], frames[files.VAL_PREDICTIONS], SAMPLES)))
    (out / files.METRICS).write_text(json.dumps(metrics, indent=2, allow_nan=False))
    return out


def permuted_labels(folder: Path, split_file: str, seed: int) -> dict[str, int]:
    """The films of one split with their labels shuffled among them, the same for every result folder."""
    films = artifacts.read_predictions(folder / split_file)
    shuffled = np.random.default_rng(seed).permutation(films["label"].to_numpy())
    return dict(zip(films["source"], shuffled, strict=True))


def test_permuting_the_test_labels_leaves_every_choice_unchanged(searched, tmp_path):
    folders = [*searched["frozen"], searched["finetune"]]
    before = write_report(folders, tmp_path / "before", samples=SAMPLES)[0]
    chosen_before = pd.read_csv(before[files.TUNING_CSV])
    for seed in (1, 2, 3):
        labels = permuted_labels(folders[0], files.PREDICTIONS, seed)
        permuted = [relabel(f, tmp_path / f"test-{seed}" / f.name, labels, files.PREDICTIONS) for f in folders]
        after = write_report(permuted, tmp_path / f"report-{seed}", samples=SAMPLES)[0]
        chosen_after = pd.read_csv(after[files.TUNING_CSV])
        # The test films changed (their ROC AUCs moved), validation did not, and neither did any choice.
        assert not np.allclose(chosen_after["test_roc_auc"], chosen_before["test_roc_auc"])
        assert np.allclose(chosen_after["val_roc_auc"], chosen_before["val_roc_auc"])
        pd.testing.assert_frame_equal(chosen_after.drop(columns="test_roc_auc"),
                                      chosen_before.drop(columns="test_roc_auc"))
        ranked_before, ranked_after = (pd.read_csv(w[files.LEADERBOARD_CSV]).dropna(subset="learning_rate")
                                       .set_index(["backbone", "regime"])["learning_rate"].sort_index().to_dict()
                                       for w in (before, after))  # the ensemble has no learning rate
        assert ranked_after == ranked_before and len(ranked_after) == 2


def test_the_choice_reads_the_validation_films(searched, tmp_path):
    """The counterpart of the permutation above: relabelling the validation films moves the validation ROC AUC
    the choice is made on (so the test above would see a choice that read the test films)."""
    folders = searched["frozen"]
    labels = permuted_labels(folders[0], files.VAL_PREDICTIONS, seed=5)
    permuted = [relabel(f, tmp_path / f.name, labels, files.VAL_PREDICTIONS) for f in folders]
    before, after = (tuning.candidates(gather(f)[0]) for f in (folders, permuted))
    assert not np.allclose(after["val_roc_auc"], before["val_roc_auc"])
    assert np.allclose(after["test_roc_auc"], before["test_roc_auc"])


def test_the_pipeline_exports_only_among_the_ranked_trainings(searched):
    candidates = tuning.candidates(gather(searched["frozen"])[0])
    (best,) = candidates.loc[candidates["chosen"], "learning_rate"]
    assert sorted(tuning.ranked_folders(searched["frozen"])) == sorted(
        folder for folder in searched["frozen"] if folder.name.startswith(f"frozen-lr{best:g}-"))


def test_ties_go_to_the_smaller_rate_and_an_undefined_auc_is_never_chosen():
    table = pd.DataFrame({"backbone": ["A", "A", "A", "B", "B"], "regime": ["frozen"] * 5, "head": ["seed"] * 5,
                          "learning_rate": [1e-2, 1e-3, 1e-4, 1e-3, 1e-4],
                          "val_roc_auc": [0.9, 0.9, 0.8, float("nan"), 0.5]})
    assert tuning.choose(table).tolist() == [False, True, False, False, True]


def test_unequal_budgets_are_said_plainly(searched, tmp_path):
    written, _ = write_report([*searched["frozen"], searched["finetune"]], tmp_path / "report", samples=SAMPLES)
    board = pd.read_csv(written[files.LEADERBOARD_CSV]).set_index("regime")
    assert board.loc["frozen", "candidates"] == 2 and board.loc["finetune", "candidates"] == 1
    for name in (files.REPORT_HTML, files.LEADERBOARD_MD):
        text = written[name].read_text()
        assert "Unequal tuning budgets, so this comparison is not fair" in text, name
        assert "MobileNet · finetune 1, MobileNet · frozen 2" in text, name


def cli(*argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = main([str(a) for a in argv])
    return status, err.getvalue()


def test_cxr_report_refuses_results_of_one_row_that_differ_in_more_than_rate_and_seed(searched, tmp_path):
    # two_epochs differs from the frozen row's other candidate in its learning rate and its epochs.
    status, err = cli("report", searched["frozen"][0], searched["two_epochs"], "--out", tmp_path / "report")
    assert status == 2
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert "results of one row (MobileNet · frozen)" in lines[0] and "epochs 2 and 1" in lines[0]
    assert "may differ only in the learning rate (its candidates) and the seed" in lines[0]
    assert not (tmp_path / "report").exists()
    # The learning rate alone is no difference: the same two rates and one epoch are one row's candidates.
    status, err = cli("report", *searched["frozen"], "--out", tmp_path / "accepted")
    assert status == 0, err[-3000:]


def test_a_failed_candidate_is_named_with_its_learning_rate(tmp_path):
    from cxr.failures import Failure, write_failure

    write_failure(tmp_path, Failure("VGG16", 7, "train", "killed", "frozen", learning_rate=1e-4))
    assert (artifacts.read_failure(tmp_path).line()
            == "VGG16 · frozen (learning rate 0.0001, seed 7) failed in train: killed")
