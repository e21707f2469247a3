"""One bad file never stops a whole command: it is skipped and reported, as a user sees it through the CLI."""

from __future__ import annotations

import json
import os
import shutil

from cxr.cli import main


def test_link_loops_broken_links_and_fifos_in_the_source_are_skipped_and_reported(synthetic_archive, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(synthetic_archive, source, symlinks=True)
    normal = source / "chest_xray" / "train" / "NORMAL"
    (normal / "IM-7001-0001.jpeg").symlink_to(normal / "IM-7002-0001.jpeg")  # a loop of two links
    (normal / "IM-7002-0001.jpeg").symlink_to(normal / "IM-7001-0001.jpeg")
    (normal / "IM-7003-0001.jpeg").symlink_to(tmp_path / "gone.jpeg")  # broken
    os.mkfifo(normal / "IM-7004-0001.jpeg")  # reading it would block forever

    assert main(["ingest", "--source", str(source), "--out", str(tmp_path / "raw")]) == 0
    skipped = {item["file"]: item["reason"] for item in json.loads((tmp_path / "raw" / "ingest.json").read_text())
               ["skipped"]}
    assert skipped == {"chest_xray/train/NORMAL/IM-7001-0001.jpeg": "a loop of links (not followed)",
                       "chest_xray/train/NORMAL/IM-7002-0001.jpeg": "a loop of links (not followed)",
                       "chest_xray/train/NORMAL/IM-7003-0001.jpeg": "a broken link",
                       "chest_xray/train/NORMAL/IM-7004-0001.jpeg": "neither a file nor a folder"}
    films = {path.name for path in (tmp_path / "raw").rglob("*.jpeg")}
    assert len(films) == sum(1 for p in synthetic_archive.rglob("*.jpeg")) and "IM-7001-0001.jpeg" not in films


def test_a_film_whose_name_is_not_utf8_is_skipped_and_reported_by_ingest_and_preprocess(synthetic_archive,
                                                                                        raw_dataset, tmp_path,
                                                                                        capsys):
    """A name in another system's encoding (Latin-1 "café" on a UTF-8 system) cannot go into the manifest, a
    TFRecord or JSON: ingest leaves it out of the source, preprocess out of a raw folder made by hand; each
    names it, escaped, with the reason, and goes on with the other films."""
    from PIL import Image

    source = tmp_path / "source"
    shutil.copytree(synthetic_archive, source)
    normal = os.fsencode(source / "chest_xray" / "train" / "NORMAL")
    first = sorted(os.listdir(normal))[0]
    with Image.open(os.path.join(normal, first)) as image:  # content of its own, so not taken for a duplicate
        image.rotate(90).save(os.path.join(normal, b"caf\xe9-IM-9001-0001.jpeg"))
    assert main(["ingest", "--source", str(source), "--out", str(tmp_path / "raw")]) == 0
    shown = "chest_xray/train/NORMAL/caf\\xe9-IM-9001-0001.jpeg"
    assert json.loads((tmp_path / "raw" / "ingest.json").read_text())["skipped"] == [
        {"file": shown, "reason": "its name is not UTF-8 (bytes of another system's encoding, shown as \\xNN): "
                                  "rename it to include it"}]
    assert f"ingest: skipped {shown}: its name is not UTF-8" in capsys.readouterr().err

    raw = tmp_path / "by-hand"
    shutil.copytree(raw_dataset, raw)
    shutil.copyfile(os.path.join(normal, b"caf\xe9-IM-9001-0001.jpeg"),
                    os.path.join(os.fsencode(raw / "train" / "NORMAL"), b"caf\xe9-IM-9001-0001.jpeg"))
    assert main(["preprocess", "--raw", str(raw), "--out", str(tmp_path / "processed"), "--image-size", "32",
                 "--val-fraction", "0.2"]) == 0
    stats = json.loads((tmp_path / "processed" / "stats.json").read_text())
    assert [item["file"] for item in stats["skipped"]] == ["train/NORMAL/caf\\xe9-IM-9001-0001.jpeg"]
    manifest = (tmp_path / "processed" / "manifest.csv").read_text(encoding="utf-8")
    assert "caf" not in manifest and manifest.count("\n") - 1 == sum(1 for _ in raw_dataset.rglob("*.jpeg"))
