import io

import pandas as pd
import pytest
from PIL import Image

from cxr.cli import main
from cxr.errors import UserError
from cxr.results.report import write_report

EXPECTED_FILES = {"MobileNet_loss_acc_graph.png", "VGG16_loss_acc_graph.png", "compared_model_graph.png",
                  "roc_curves.png", "confusion_matrices.png", "leaderboard.csv", "leaderboard.md", "report.html"}


def test_report_writes_every_file_with_real_content(evaluated_results, tmp_path):
    written = write_report(list(evaluated_results.values()), tmp_path / "report")
    assert set(written) == EXPECTED_FILES == {p.name for p in (tmp_path / "report").iterdir()}
    for name, path in written.items():
        if name.endswith(".png"):
            with Image.open(path) as image:
                image.load()
                assert image.size[0] >= 400 and image.size[1] >= 300
    table = pd.read_csv(written["leaderboard.csv"])
    assert sorted(table["backbone"]) == ["MobileNet", "VGG16"]
    assert table["roc_auc"].is_monotonic_decreasing
    assert {"train_accuracy", "val_accuracy", "test_accuracy", "test_loss", "sensitivity", "specificity",
            "roc_auc", "learning_time", "epochs"} <= set(table.columns)
    markdown = written["leaderboard.md"].read_text().splitlines()
    assert len(markdown) == 2 + 2 and markdown[0].startswith("| backbone |")


def test_html_report_is_self_contained(evaluated_results, tmp_path):
    html = write_report(list(evaluated_results.values()), tmp_path / "report")["report.html"].read_text()
    assert html.count('src="data:image/png;base64,') == 5  # comparison, ROC, confusion, two loss/acc graphs
    assert "http://" not in html and "https://" not in html
    assert "MobileNet" in html and "VGG16" in html
    import base64
    first = html.split('src="data:image/png;base64,')[1].split('"')[0]
    Image.open(io.BytesIO(base64.b64decode(first))).load()


def test_report_refuses_a_folder_that_is_not_a_result(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "report")]) == 2
    assert "not a result folder" in capsys.readouterr().err


def test_report_refuses_the_same_backbone_twice(evaluated_results, tmp_path):
    with pytest.raises(UserError, match="same backbone"):
        write_report([evaluated_results["VGG16"]] * 2, tmp_path / "report")
