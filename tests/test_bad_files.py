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
