"""Hostile and odd input, as a new user meets it, through the command line: each case ends in one line naming the
file or setting and exit status 2, or in a file skipped and reported; nothing the user owns is changed."""

import json
import shutil
import zipfile

import pytest
from PIL import Image

from cxr.cli import main


def _one_error_line(capsys, *expected: str) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(lines) == 1, lines
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def test_a_link_out_of_the_source_tree_is_skipped_and_reported_never_copied(synthetic_archive, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(synthetic_archive, source, symlinks=True)
    secret = tmp_path / "private" / "id_rsa.jpeg"
    secret.parent.mkdir()
    secret.write_bytes(b"not yours")
    normal = source / "chest_xray" / "train" / "NORMAL"
    (normal / "IM-9999-0001.jpeg").symlink_to(secret)
    (source / "chest_xray" / "train" / "outside").symlink_to(secret.parent, target_is_directory=True)
    inside = next(normal.glob("IM-*.jpeg"))
    (source / "chest_xray" / "test" / "NORMAL" / "IM-8888-0001.jpeg").symlink_to(inside)  # stays inside: kept

    assert main(["ingest", "--source", str(source), "--out", str(tmp_path / "raw")]) == 0
    report = json.loads((tmp_path / "raw" / "ingest.json").read_text())
    assert {item["file"] for item in report["skipped"]} == {"chest_xray/train/NORMAL/IM-9999-0001.jpeg",
                                                          "chest_xray/train/outside"}
    copied = b"".join(p.read_bytes() for p in (tmp_path / "raw").rglob("*.jpeg"))
    assert b"not yours" not in copied
    # A link inside the tree is an ordinary file: kept in test, where the official split wins over train.
    assert (tmp_path / "raw" / "test" / "NORMAL" / "IM-8888-0001.jpeg").read_bytes() == inside.read_bytes()


def test_a_zip_member_with_a_bad_crc_is_skipped_and_reported(synthetic_archive, tmp_path):
    archive = tmp_path / "archive.zip"
    members = sorted(p for p in synthetic_archive.rglob("*.jpeg"))
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zipped:
        for path in members:
            zipped.write(path, path.relative_to(synthetic_archive).as_posix())
    broken = members[0].relative_to(synthetic_archive).as_posix()
    with zipfile.ZipFile(archive) as zipped:
        offset = zipped.getinfo(broken).header_offset
    data = bytearray(archive.read_bytes())
    header_end = offset + 30 + len(broken.encode())
    data[header_end + 100] ^= 0xFF  # one flipped byte inside the stored member: its CRC no longer matches
    archive.write_bytes(bytes(data))

    assert main(["ingest", "--source", str(archive), "--out", str(tmp_path / "raw")]) == 0
    report = json.loads((tmp_path / "raw" / "ingest.json").read_text())
    assert [item["file"] for item in report["skipped"]] == [broken]
    assert "CRC" in report["skipped"][0]["reason"]
    assert sum(sum(c.values()) for c in report["counts"].values()) == len(members) - 1


def test_an_image_too_large_to_decode_safely_is_skipped_not_fatal(raw_dataset, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(raw_dataset, raw)
    huge = raw / "train" / "NORMAL" / "IM-7777-0001.jpeg"
    Image.new("1", (12_000, 12_000)).save(huge, format="PNG")  # 144 megapixels, a few kB on disk
    assert huge.stat().st_size < 1_000_000
    assert main(["preprocess", "--raw", str(raw), "--out", str(tmp_path / "out"), "--image-size", "32"]) == 0
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert [item["file"] for item in stats["skipped"]] == ["train/NORMAL/IM-7777-0001.jpeg"]
    assert "too large to decode safely" in stats["skipped"][0]["reason"]


@pytest.mark.parametrize("command", ["synth", "ingest", "preprocess", "train", "evaluate", "report", "explain",
                                     "export"])
def test_an_output_path_that_is_a_file_or_cannot_be_created_is_one_line(command, processed_dataset, raw_dataset,
                                                                       evaluated_results, tmp_path, capsys):
    model = evaluated_results["MobileNet"].parent / "MobileNet-model"
    arguments = {
        "synth": lambda out: ["synth", out],
        "ingest": lambda out: ["ingest", "--source", str(raw_dataset), "--out", out],
        "preprocess": lambda out: ["preprocess", "--raw", str(raw_dataset), "--out", out],
        "train": lambda out: ["train", "--data", str(processed_dataset), "--backbone", "mobilenet", "--out", out,
                              "--weights", "none", "--image-size", "32", "--device", "cpu"],
        "evaluate": lambda out: ["evaluate", "--data", str(processed_dataset), "--model", str(model), "--out", out],
        "report": lambda out: ["report", str(evaluated_results["MobileNet"]), "--out", out],
        "explain": lambda out: ["explain", "--data", str(processed_dataset), "--model", str(model), "--result",
                                str(evaluated_results["MobileNet"]), "--out", out],
        "export": lambda out: ["export", "--model", str(model), "--result", str(evaluated_results["MobileNet"]),
                               "--out", out],
    }[command]
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    assert main(arguments(str(a_file))) == 2
    _one_error_line(capsys, str(a_file), "is a file")
    assert a_file.read_text() == "mine"
    assert main(arguments("/proc/cxr-cannot/be-here")) == 2
    _one_error_line(capsys, "/proc/cxr-cannot/be-here", "cannot create")


def test_predict_into_a_place_it_cannot_write_is_one_line(evaluated_results, synthetic_archive, capsys):
    film = next(synthetic_archive.rglob("*.jpeg"))
    assert main(["predict", "--model", str(evaluated_results["MobileNet"].parent / "MobileNet-model"), "--result",
                 str(evaluated_results["MobileNet"]), str(film), "--out", "/proc/cxr-cannot/p.csv"]) == 2
    _one_error_line(capsys, "/proc/cxr-cannot/p.csv", "cannot write it")


def test_explain_never_writes_into_someone_elses_folder(processed_dataset, evaluated_results, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert main(["explain", "--data", str(processed_dataset), "--model",
                 str(evaluated_results["MobileNet"].parent / "MobileNet-model"), "--result",
                 str(evaluated_results["MobileNet"]), "--out", str(mine)]) == 2
    _one_error_line(capsys, str(mine), "not written by cxr")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_evaluate_and_report_never_write_over_files_they_did_not_write(processed_dataset, evaluated_results,
                                                                       tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "predictions.csv").write_text("my own predictions\n")
    (mine / "leaderboard.csv").write_text("my own leaderboard\n")
    model = evaluated_results["MobileNet"].parent / "MobileNet-model"
    assert main(["evaluate", "--data", str(processed_dataset), "--model", str(model), "--out", str(mine)]) == 2
    _one_error_line(capsys, str(mine), "not written by cxr")
    assert main(["report", str(evaluated_results["MobileNet"]), "--out", str(mine)]) == 2
    _one_error_line(capsys, str(mine), "not written by cxr")
    assert (mine / "predictions.csv").read_text() == "my own predictions\n"
    assert (mine / "leaderboard.csv").read_text() == "my own leaderboard\n"
    # Evaluating one model into another model's training folder would replace its train_metrics.json.
    other = evaluated_results["VGG16"].parent / "VGG16-model"
    before = (other / "train_metrics.json").read_bytes()
    assert main(["evaluate", "--data", str(processed_dataset), "--model", str(model), "--out", str(other)]) == 2
    _one_error_line(capsys, "holds another training")
    assert (other / "train_metrics.json").read_bytes() == before


def test_reruns_on_finished_outputs_reuse_them(raw_dataset, evaluated_results, tmp_path, capsys):
    out = tmp_path / "processed"
    arguments = ["preprocess", "--raw", str(raw_dataset), "--out", str(out), "--image-size", "32"]
    assert main(arguments) == 0
    stamp = (out / "stats.json").stat().st_mtime_ns
    assert main(arguments) == 0
    assert "reusing it" in capsys.readouterr().err and (out / "stats.json").stat().st_mtime_ns == stamp
    assert main([*arguments[:-1], "64"]) == 2
    _one_error_line(capsys, "other settings", "image_size")

    report = ["report", *map(str, evaluated_results.values()), "--out", str(tmp_path / "report")]
    assert main(report) == 0
    assert main(report) == 0
    assert "reusing it" in capsys.readouterr().err


def test_a_truncated_model_and_a_bad_batch_size_are_one_line(processed_dataset, evaluated_results, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(evaluated_results["MobileNet"].parent / "MobileNet-model", model)
    assert main(["evaluate", "--data", str(processed_dataset), "--model", str(model), "--out", str(tmp_path / "a"),
                 "--batch-size", "0"]) == 2
    _one_error_line(capsys, "--batch-size")
    keras_file = model / "model.keras"
    keras_file.write_bytes(keras_file.read_bytes()[: keras_file.stat().st_size // 2])
    assert main(["evaluate", "--data", str(processed_dataset), "--model", str(model), "--out",
                 str(tmp_path / "b")]) == 2
    _one_error_line(capsys, "model.keras is damaged")


def test_an_archive_without_weights_and_no_room_to_unpack_them_are_one_line(processed_dataset, evaluated_results,
                                                                          tmp_path, capsys):
    """model.keras re-zipped without its weights file; then the whole model, with the process allowed files of
    1 MB at most (RLIMIT_FSIZE, as a full disk refuses the write): the weights' temporary copy cannot be made."""
    import resource
    import signal

    model = tmp_path / "model"
    shutil.copytree(evaluated_results["MobileNet"].parent / "MobileNet-model", model)
    whole = (model / "model.keras").read_bytes()
    with zipfile.ZipFile(model / "model.keras", "w") as archive:
        archive.writestr("config.json", "{}")
    assert main(["evaluate", "--data", str(processed_dataset), "--model", str(model), "--out",
                 str(tmp_path / "a")]) == 2
    _one_error_line(capsys, "model.keras is damaged", "it holds no model.weights.h5")

    (model / "model.keras").write_bytes(whole)
    handler, limits = signal.signal(signal.SIGXFSZ, signal.SIG_IGN), resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, limits[1]))
    try:
        status = main(["evaluate", "--data", str(processed_dataset), "--model", str(model), "--out",
                       str(tmp_path / "b")])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert status == 2
    _one_error_line(capsys, "its weights could not be unpacked into", "TMPDIR")
    assert (model / "model.keras").read_bytes() == whole  # the user's model is untouched


def test_an_empty_metrics_file_is_one_line_naming_it(evaluated_results, tmp_path, capsys):
    result = tmp_path / "result"
    shutil.copytree(evaluated_results["MobileNet"], result)
    (result / "metrics.json").write_text("")
    assert main(["report", str(result), "--out", str(tmp_path / "report")]) == 2
    _one_error_line(capsys, str(result / "metrics.json"), "damaged or empty")


def test_missing_cloud_credentials_are_one_line(tmp_path, capsys, monkeypatch):
    """No credentials anywhere; the metadata server that google-auth would ask is pointed at a closed local
    port, so nothing leaves this machine."""
    for name in ("GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST", "CLOUDSDK_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["ingest", "--source", "gs://some-bucket/chest_xray", "--out", str(tmp_path / "raw")]) == 2
    _one_error_line(capsys, "no Google Cloud credentials")


def test_absurd_sizes_are_refused_before_any_work(raw_dataset, tmp_path, capsys):
    assert main(["preprocess", "--raw", str(raw_dataset), "--out", str(tmp_path / "p"), "--image-size", "10000"]) == 2
    _one_error_line(capsys, "--image-size", "10000")
    assert main(["synth", str(tmp_path / "s"), "--max-size", "100000"]) == 2
    _one_error_line(capsys, "--max-size")
    assert not (tmp_path / "p").exists() and not (tmp_path / "s" / "chest_xray").exists()

