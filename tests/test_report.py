import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr.cli import main
from cxr.errors import UserError
from cxr.results import calibration
from cxr.results.collect import failures
from cxr.results.metrics import json_safe, roc_auc, roc_curve, summarize
from cxr.results.report import write_report

EXPECTED_FILES = {"MobileNet_loss_acc_graph.png", "VGG16_loss_acc_graph.png", "compared_model_graph.png",
                  "roc_curves.png", "confusion_matrices.png", "calibration.png", "leaderboard.csv", "leaderboard.md",
                  "report.html", "ensemble_metrics.json", "tuning.csv", "learning_rate_search.png"}


def test_report_writes_every_file_with_real_content(evaluated_results, tmp_path):
    written, _ = write_report(list(evaluated_results.values()), tmp_path / "report")
    assert set(written) == EXPECTED_FILES == {p.name for p in (tmp_path / "report").iterdir()} - {
        ".cxr-lock", ".cxr-output.json"}
    for name, path in written.items():
        if name.endswith(".png"):
            with Image.open(path) as image:
                image.load()
                assert image.size[0] >= 400 and image.size[1] >= 300
    table = pd.read_csv(written["leaderboard.csv"])
    assert table["roc_auc"].is_monotonic_decreasing
    assert sorted(table["backbone"]) == ["Ensemble", "MobileNet", "VGG16"]
    assert {"train_accuracy", "val_accuracy", "test_accuracy", "test_loss", "sensitivity", "specificity",
            "roc_auc", "learning_time", "epochs", "seeds", "roc_auc_std", "auc_diff_vs_best", "auc_diff_ci95_low",
            "auc_diff_ci95_high", "delong_p_vs_best", "vs_best", "brier", "ece"} <= set(table.columns)
    assert table["vs_best"].iloc[0] == "best" and table["auc_diff_vs_best"].iloc[0] == 0
    assert table["delong_p_vs_best"].iloc[1:].between(0, 1).all()
    # The compact table first (header, rule, three rows), the sentence, then every column for the same rows.
    markdown = written["leaderboard.md"].read_text().splitlines()
    assert markdown[0].startswith("| backbone ") and markdown[0].split("|")[2].strip() == "regime"
    assert all(line.startswith("|") for line in markdown[:5]) and markdown[5] == ""
    assert markdown[6].startswith(("Cannot be told apart", "Every other model's"))
    full = markdown[markdown.index("## Every column") + 2:]
    assert len(full) == 2 + 3 and full[0].split("|")[1].strip() == "backbone" and "delong_p_vs_best" in full[0]


def test_html_report_is_self_contained(evaluated_results, tmp_path):
    html = write_report(list(evaluated_results.values()), tmp_path / "report")[0]["report.html"].read_text()
    # comparison, ROC, calibration, confusion, the learning-rate search, two loss/acc graphs
    assert html.count('src="data:image/png;base64,') == 7
    assert "http://" not in html and "https://" not in html
    assert "MobileNet" in html and "VGG16" in html
    import base64
    first = html.split('src="data:image/png;base64,')[1].split('"')[0]
    Image.open(io.BytesIO(base64.b64decode(first))).load()


def test_report_refuses_a_folder_that_is_not_a_result(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "report")]) == 2
    assert "not a result folder" in capsys.readouterr().err


def test_report_refuses_the_same_backbone_and_seed_twice(evaluated_results, tmp_path):
    with pytest.raises(UserError, match=r"same training \(VGG16 · finetune, learning rate 1e-05, seed 42\)"):
        write_report([evaluated_results["VGG16"]] * 2, tmp_path / "report")


# Synthetic results: predictions written directly, for the tests about the statistics (no training needed).
RNG = np.random.default_rng(11)
TEST_FILMS = pd.DataFrame({"patient_id": [f"p{i // 2}" for i in range(120)], "source": [f"t{i:03}" for i in range(120)],
                           "label": np.repeat(RNG.integers(0, 2, 60), 2)})
VAL_FILMS = pd.DataFrame({"patient_id": [f"v{i}" for i in range(40)], "source": [f"v{i:03}" for i in range(40)],
                          "label": RNG.integers(0, 2, 40)})


def scores(films: pd.DataFrame, strength: float, seed: int) -> np.ndarray:
    """P(pneumonia) that separates the classes the more, the larger `strength`."""
    noise = np.random.default_rng(seed).normal(0, 1, len(films))
    return 1 / (1 + np.exp(-(strength * (films["label"].to_numpy() - 0.5) + noise)))


def write_result(folder: Path, backbone: str, seed: int, test: np.ndarray, val: np.ndarray) -> Path:
    """A result folder as `cxr evaluate` writes it, from given probabilities."""
    folder.mkdir(parents=True)
    test_frame, val_frame = TEST_FILMS.assign(probability=test), VAL_FILMS.assign(probability=val)
    test_frame.to_csv(folder / "predictions.csv", index=False)
    val_frame.to_csv(folder / "val_predictions.csv", index=False)
    roc_curve(test_frame["label"], test).to_csv(folder / "roc.csv", index=False)
    metrics = json_safe({"backbone": backbone, **summarize(test_frame, val_frame, samples=50)})
    (folder / "metrics.json").write_text(json.dumps(metrics))
    best = {"loss": 0.5, "accuracy": 0.8, "val_loss": 0.6, "val_accuracy": 0.75}
    (folder / "train_metrics.json").write_text(json.dumps({
        "backbone": backbone, "image_size": 32, "best": best, "best_epoch": 2, "epochs_run": 3,
        "learning_time": "0:00:10", "learning_time_seconds": 10.0,
        "settings": {"seed": seed, "learning_rate": 1e-5, "dense_units": 16, "dropout": 0.5}}))
    pd.DataFrame({"epoch": [1, 2, 3], "loss": [0.7, 0.5, 0.4], "accuracy": [0.6, 0.8, 0.85],
                  "val_loss": [0.7, 0.6, 0.65], "val_accuracy": [0.6, 0.75, 0.7]}).to_csv(folder / "history.csv",
                                                                                          index=False)
    return folder


def write_failure(folder: Path, backbone: str, seed: int, stage: str, reason: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "failure.json").write_text(json.dumps({"backbone": backbone, "seed": seed, "stage": stage,
                                                     "reason": reason}))
    return folder


def flat(value, prefix: str = "") -> dict:
    """Nested metrics as {"a/b/0": number}, for pytest.approx."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flat(item, f"{prefix}{key}/").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in flat(item, f"{prefix}{i}/").items()}
    return {prefix: float("nan") if value is None else value} if not isinstance(value, str) else {}


def test_the_ensemble_is_the_hand_averaged_pair_evaluated_as_a_backbone(tmp_path):
    strong = (scores(TEST_FILMS, 3, 1), scores(VAL_FILMS, 3, 2))
    weak = (scores(TEST_FILMS, 1, 3), scores(VAL_FILMS, 1, 4))
    dirs = [write_result(tmp_path / "a", "ResNet50", 42, *strong), write_result(tmp_path / "b", "VGG16", 42, *weak)]
    written, _ = write_report(dirs, tmp_path / "report", samples=100)
    averaged_test, averaged_val = (strong[0] + weak[0]) / 2, (strong[1] + weak[1]) / 2
    expected = summarize(TEST_FILMS.assign(probability=averaged_test), VAL_FILMS.assign(probability=averaged_val),
                         samples=100)
    ensemble = json.loads(written["ensemble_metrics.json"].read_text())
    assert ensemble["members"] == ["ResNet50 · finetune", "VGG16 · finetune"]
    assert ensemble["thresholds"] == pytest.approx(expected["thresholds"])  # chosen on the averaged validation
    made_from = ensemble.pop("provenance")  # what the ensemble was made from: its members' trainings
    assert [(m["backbone"], m["seed"]) for m in made_from["members"]] == [("ResNet50", 42), ("VGG16", 42)]
    assert flat(ensemble) == pytest.approx(flat(json_safe({"backbone": "Ensemble", "members": ensemble["members"],
                                                           **expected})), nan_ok=True)
    table = pd.read_csv(written["leaderboard.csv"]).set_index("backbone")
    labels = TEST_FILMS["label"]
    assert table.loc["Ensemble", "roc_auc"] == pytest.approx(roc_auc(labels, averaged_test))
    assert table.loc["Ensemble", "brier"] == pytest.approx(calibration.brier_score(labels, averaged_test))
    assert table.loc["Ensemble", "ece"] == pytest.approx(calibration.expected_calibration_error(labels, averaged_test))
    assert "Ensemble" in written["report.html"].read_text()


def test_a_clearly_worse_backbone_is_told_apart_and_a_near_copy_is_not(tmp_path):
    best = scores(TEST_FILMS, 4, 1)
    near_copy = np.clip(best + np.random.default_rng(5).normal(0, 0.005, len(best)), 0, 1)
    worse = scores(TEST_FILMS, 0.2, 6)
    val = scores(VAL_FILMS, 2, 7)
    dirs = [write_result(tmp_path / name, name, 42, probabilities, val)
            for name, probabilities in (("ResNet50", best), ("Xception", near_copy), ("MobileNet", worse))]
    written, _ = write_report(dirs, tmp_path / "report", samples=200)
    table = pd.read_csv(written["leaderboard.csv"]).set_index("backbone")
    best_name = table.index[0]
    assert best_name in ("ResNet50", "Xception")
    other = "Xception" if best_name == "ResNet50" else "ResNet50"
    assert table.loc[other, "vs_best"] == "indistinguishable"
    assert table.loc["MobileNet", "vs_best"] == "lower"
    assert table.loc["MobileNet", "delong_p_vs_best"] < 0.001
    labels = TEST_FILMS["label"]
    assert table.loc["MobileNet", "auc_diff_vs_best"] == pytest.approx(
        roc_auc(labels, worse) - roc_auc(labels, best if best_name == "ResNet50" else near_copy))
    assert table.loc["MobileNet", "auc_diff_ci95_low"] < table.loc["MobileNet", "auc_diff_vs_best"] < table.loc[
        "MobileNet", "auc_diff_ci95_high"] < 0
    sentence = next(line for line in written["leaderboard.md"].read_text().splitlines()
                    if line.startswith(f"Cannot be told apart from the best ({best_name} · finetune)"))
    tied = sentence.split("): ")[1].rstrip(".")
    assert f"{other} · finetune" in tied.split(", ") and "MobileNet" not in tied


def test_two_seeds_of_one_backbone_give_their_mean_spread_and_averaged_comparison(tmp_path):
    seeds = {1: scores(TEST_FILMS, 1.5, 21), 2: scores(TEST_FILMS, 1.0, 22)}
    val = scores(VAL_FILMS, 1, 23)
    best = scores(TEST_FILMS, 4, 24)
    dirs = [write_result(tmp_path / f"mobilenet-{seed}", "MobileNet", seed, p, val) for seed, p in seeds.items()]
    dirs.append(write_result(tmp_path / "vgg", "VGG16", 42, best, val))
    written, _ = write_report(dirs, tmp_path / "report", samples=100)
    table = pd.read_csv(written["leaderboard.csv"]).set_index("backbone")
    labels = TEST_FILMS["label"]
    aucs = [roc_auc(labels, p) for p in seeds.values()]
    assert table.loc["MobileNet", "seeds"] == 2 and table.loc["VGG16", "seeds"] == 1
    assert table.loc["MobileNet", "roc_auc"] == pytest.approx(np.mean(aucs))
    assert table.loc["MobileNet", "roc_auc_std"] == pytest.approx(abs(aucs[0] - aucs[1]) / np.sqrt(2))
    assert table.loc["MobileNet", "test_accuracy_std"] >= 0 and np.isnan(table.loc["VGG16", "roc_auc_std"])
    averaged = (seeds[1] + seeds[2]) / 2  # the paired comparison uses the seed-averaged probabilities
    assert table.loc["MobileNet", "auc_diff_vs_best"] == pytest.approx(roc_auc(labels, averaged)
                                                                       - roc_auc(labels, best))
    ensemble = json.loads(written["ensemble_metrics.json"].read_text())
    assert ensemble["roc_auc"]["value"] == pytest.approx(roc_auc(labels, (averaged + best) / 2))
    assert {"MobileNet_loss_acc_graph.png", "VGG16_loss_acc_graph.png"} <= set(written)


def test_a_failed_backbone_is_listed_and_the_rest_reported(tmp_path):
    val = scores(VAL_FILMS, 1, 31)
    dirs = [write_result(tmp_path / "a", "MobileNet", 42, scores(TEST_FILMS, 2, 32), val),
            write_result(tmp_path / "b", "VGG16", 42, scores(TEST_FILMS, 1, 33), val),
            write_failure(tmp_path / "c", "ResNet50", 7, "train", "out of GPU memory at epoch 3")]
    written, _ = write_report(dirs, tmp_path / "report", samples=50)
    assert [f.line() for f in failures(dirs)] == ["ResNet50 (seed 7) failed in train: out of GPU memory at epoch 3"]
    html = written["report.html"].read_text()
    assert '<section id="missing"><h2>Missing</h2>' in html
    assert html.index("out of GPU memory at epoch 3") < html.index("<table")
    assert "Missing: ResNet50 (seed 7) failed in train: out of GPU memory" in written["leaderboard.md"].read_text()
    table = pd.read_csv(written["leaderboard.csv"]).set_index("backbone")
    assert sorted(table.index) == ["Ensemble", "MobileNet", "VGG16"]
    # One seed and as many resamples as evaluate drew: the report's interval is evaluate's, redone from predictions.
    interval = json.loads((dirs[0] / "metrics.json").read_text())["roc_auc"]["ci95"]
    assert table.loc["MobileNet", "roc_auc_ci95"] == f"{interval[0]:.3f}-{interval[1]:.3f}"
    assert "<td>&lt;NA&gt;</td>" not in html and "<td>nan</td>" not in html


def test_every_backbone_failed_still_writes_a_report_that_says_so(tmp_path, capsys):
    dirs = [write_failure(tmp_path / "a", "MobileNet", 42, "train", "killed"),
            write_failure(tmp_path / "b", "VGG16", 42, "evaluate", "no test films")]
    assert main(["report", *map(str, dirs), "--out", str(tmp_path / "report")]) == 0
    report = tmp_path / "report"
    assert "No backbone finished" in (report / "leaderboard.md").read_text()
    html = (report / "report.html").read_text()
    assert "No backbone finished" in html and "VGG16 (seed 42) failed in evaluate: no test films" in html
    assert pd.read_csv(report / "leaderboard.csv").empty
    assert len(failures(dirs)) == 2


def test_a_broken_failure_record_is_one_clear_error(tmp_path, capsys):
    folder = write_failure(tmp_path / "a", "MobileNet", 42, "deploy", "?")
    assert main(["report", str(folder), "--out", str(tmp_path / "report")]) == 2
    assert "failure.json: stage must be one of train, evaluate" in capsys.readouterr().err
    (folder / "failure.json").write_text("{")
    with pytest.raises(UserError, match="is not a failure record"):
        write_report([folder], tmp_path / "report")


def as_frozen(folder: Path, feature_seconds: float, head: str = "seed") -> Path:
    """A result rewritten as a frozen training's with `head`: the regime and head in metrics.json and
    train_metrics.json (which evaluate copies from it), and the feature extraction's time."""
    metrics = json.loads((folder / "metrics.json").read_text())
    (folder / "metrics.json").write_text(json.dumps({**metrics, "regime": "frozen", "head": head}))
    trained = json.loads((folder / "train_metrics.json").read_text())
    trained["settings"].update(regime="frozen", head=head)
    (folder / "train_metrics.json").write_text(json.dumps({**trained, "feature_seconds": feature_seconds}))
    return folder


def test_regimes_are_rows_of_their_own_compared_side_by_side(tmp_path):
    val = scores(VAL_FILMS, 2, 41)
    finetuned, vgg = scores(TEST_FILMS, 3, 42), scores(TEST_FILMS, 1, 45)
    frozen_seeds = {1: scores(TEST_FILMS, 2, 43), 2: scores(TEST_FILMS, 1.5, 44)}
    dirs = [write_result(tmp_path / "resnet", "ResNet50", 42, finetuned, val),
            write_result(tmp_path / "vgg", "VGG16", 42, vgg, val),
            *(as_frozen(write_result(tmp_path / f"frozen-{seed}", "ResNet50", seed, p, val), 95.0 + seed)
              for seed, p in frozen_seeds.items())]
    written, _ = write_report(dirs, tmp_path / "report", samples=100)
    table = pd.read_csv(written["leaderboard.csv"])
    assert sorted(zip(table["backbone"], table["regime"], strict=True)) == [
        ("Ensemble", "finetune + frozen"), ("ResNet50", "finetune"), ("ResNet50", "frozen"), ("VGG16", "finetune")]
    rows = table.set_index(["backbone", "regime"])
    labels = TEST_FILMS["label"]
    frozen = rows.loc[("ResNet50", "frozen")]
    assert frozen["seeds"] == 2  # the two seeds of one backbone and regime are averaged
    assert frozen["roc_auc"] == pytest.approx(np.mean([roc_auc(labels, p) for p in frozen_seeds.values()]))
    # Its learning time includes the feature extraction: 10 s of training + 96 s and + 97 s of features.
    assert frozen["learning_time"] == "0:01:46 / 0:01:47" and frozen["learning_seconds"] == pytest.approx(106.5)
    assert rows.loc[("ResNet50", "finetune"), "learning_time"] == "0:00:10"
    # The paired tests run over every row, the ensemble averages every contender.
    assert table["delong_p_vs_best"].iloc[1:].between(0, 1).all() and table["vs_best"].iloc[0] == "best"
    averaged_frozen = (frozen_seeds[1] + frozen_seeds[2]) / 2
    ensemble = json.loads(written["ensemble_metrics.json"].read_text())
    assert ensemble["members"] == ["ResNet50 · finetune", "ResNet50 · frozen", "VGG16 · finetune"]
    assert ensemble["roc_auc"]["value"] == pytest.approx(roc_auc(labels, (finetuned + averaged_frozen + vgg) / 3))
    assert {"ResNet50_loss_acc_graph.png", "ResNet50_frozen_loss_acc_graph.png"} <= set(written)

    markdown = written["leaderboard.md"].read_text()
    compact = pd.read_csv(io.StringIO(markdown.split("\n\n")[0]), sep="|", skipinitialspace=True).iloc[1:, 1:-1]
    compact.columns = [c.strip() for c in compact.columns]
    assert list(compact.columns) == ["backbone", "regime", "head", "learning rate", "ROC AUC (95 % CI)",
                                     "sensitivity at val. threshold",
                                     "specificity at val. threshold", "vs best", "Brier", "learning time"]
    frozen_line = next(line for line in markdown.splitlines() if "| frozen " in line)
    low, high = frozen["roc_auc_ci95"].split("-")
    assert f"{frozen['roc_auc']:.3f} ({low}-{high})" in frozen_line and "0:01:46 / 0:01:47 †" in frozen_line
    assert "† A frozen row's learning time includes its feature extraction" in markdown
    # Every column: counts as whole numbers, nothing where a row has no value (the ensemble trains nothing).
    full = pd.read_csv(io.StringIO(markdown.split("## Every column")[1].strip()), sep="|", dtype=str,
                       keep_default_na=False).iloc[1:, 1:-1]
    full.columns = [c.strip() for c in full.columns]
    full = full.map(str.strip).set_index(["backbone", "regime"])
    assert full.loc[("ResNet50", "frozen"), ["seeds", "epochs"]].tolist() == ["2", "3"]
    assert full.loc[("Ensemble", "finetune + frozen"), ["seeds", "epochs", "learning_time"]].tolist() == ["", "", ""]
    assert not {"nan", "NaN", "<NA>", "None"} & set(full.to_numpy().ravel())
    html = written["report.html"].read_text()
    assert "<tr><td>ResNet50</td><td>frozen</td>" in html
    assert "A frozen row's learning time includes its feature extraction" in html
    assert html.index('class="compact"') < html.index('class="full"')


def test_each_head_is_a_row_of_its_own_in_every_table_test_and_the_ensemble(tmp_path):
    val = scores(VAL_FILMS, 2, 61)
    by_head = {"seed": scores(TEST_FILMS, 2, 62), "linear": scores(TEST_FILMS, 3, 63), "knn": scores(TEST_FILMS, 1, 64)}
    dirs = [as_frozen(write_result(tmp_path / head, "ResNet50", 42, p, val), 90.0, head) for head, p in by_head.items()]
    written, _ = write_report(dirs, tmp_path / "report", samples=100)
    table = pd.read_csv(written["leaderboard.csv"])
    assert sorted(zip(table["backbone"], table["regime"], table["head"], strict=True)) == [
        ("Ensemble", "frozen", "seed + linear + knn"), ("ResNet50", "frozen", "knn"), ("ResNet50", "frozen", "linear"),
        ("ResNet50", "frozen", "seed")]
    # Sorted by test ROC AUC: the heads' scores separate the classes by 3, 2 and 1 standard deviations.
    assert table.loc[table["backbone"] == "ResNet50", "head"].tolist() == ["linear", "seed", "knn"]
    assert table["delong_p_vs_best"].iloc[1:].between(0, 1).all() and table["vs_best"].iloc[0] == "best"
    ensemble = json.loads(written["ensemble_metrics.json"].read_text())
    assert ensemble["members"] == ["ResNet50 · frozen", "ResNet50 · frozen · linear", "ResNet50 · frozen · knn"]
    labels = TEST_FILMS["label"]
    assert ensemble["roc_auc"]["value"] == pytest.approx(roc_auc(labels, sum(by_head.values()) / 3))
    assert {"ResNet50_frozen_loss_acc_graph.png", "ResNet50_frozen_linear_loss_acc_graph.png",
            "ResNet50_frozen_knn_loss_acc_graph.png"} <= set(written)
    assert "<tr><td>ResNet50</td><td>frozen</td><td>knn</td>" in written["report.html"].read_text()
    assert "| knn " in written["leaderboard.md"].read_text().split("\n\n")[0]


def test_without_a_frozen_row_there_is_no_footnote(tmp_path):
    val = scores(VAL_FILMS, 2, 51)
    dirs = [write_result(tmp_path / name, name, 42, scores(TEST_FILMS, s, 52), val)
            for name, s in (("ResNet50", 3), ("VGG16", 1))]
    written, _ = write_report(dirs, tmp_path / "report", samples=50)
    assert "feature extraction" not in written["leaderboard.md"].read_text()
    assert "†" not in written["report.html"].read_text()
