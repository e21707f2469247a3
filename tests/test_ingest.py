import io
import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cxr.cli import main
from cxr.data import gcs
from cxr.data.ingest import ingest


def _archive_like_tree(root: Path) -> Path:
    """The real archive's quirks in miniature: a nested duplicate copy, macOS debris, a byte-identical
    duplicate under another name, and a stray file outside the layout."""
    for copy in (root / "chest_xray", root / "chest_xray" / "chest_xray"):
        for split, class_name, name, data in [
            ("train", "NORMAL", "IM-0001-0001.jpeg", b"normal-1"),
            ("train", "PNEUMONIA", "person1_bacteria_1.jpeg", b"pneumonia-1"),
            ("val", "NORMAL", "IM-0002-0001.jpeg", b"normal-2"),
            ("val", "PNEUMONIA", "person2_virus_2.jpeg", b"pneumonia-2"),
            ("test", "NORMAL", "IM-0003-0001.jpeg", b"normal-3"),
            ("test", "PNEUMONIA", "person3_virus_3.jpeg", b"pneumonia-3"),
        ]:
            folder = copy / split / class_name
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
    (root / "chest_xray" / "train" / "NORMAL" / "IM-0009-0001.jpeg").write_bytes(b"normal-3")  # = a test image
    (root / "chest_xray" / "train" / "NORMAL" / ".DS_Store").write_bytes(b"\0")
    macos = root / "__MACOSX" / "chest_xray" / "train" / "NORMAL"
    macos.mkdir(parents=True)
    (macos / "._IM-0001-0001.jpeg").write_bytes(b"appledouble")
    (root / "chest_xray" / "train" / "NORMAL" / "._IM-0001-0001.jpeg").write_bytes(b"appledouble")
    (root / "README.txt").write_text("stray")
    return root


def _normalised(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*.jpeg")}


EXPECTED = {
    "train/NORMAL/IM-0001-0001.jpeg": b"normal-1",
    "train/PNEUMONIA/person1_bacteria_1.jpeg": b"pneumonia-1",
    "val/NORMAL/IM-0002-0001.jpeg": b"normal-2",
    "val/PNEUMONIA/person2_virus_2.jpeg": b"pneumonia-2",
    "test/NORMAL/IM-0003-0001.jpeg": b"normal-3",
    "test/PNEUMONIA/person3_virus_3.jpeg": b"pneumonia-3",
}


def test_folder_source_is_normalised_once_per_distinct_image(tmp_path):
    report = ingest(str(_archive_like_tree(tmp_path / "src")), tmp_path / "out")
    assert _normalised(tmp_path / "out") == EXPECTED
    # 6 nested copies plus the renamed duplicate of a test image, which stays in test where it came first.
    assert len(report.duplicates) == 7
    assert {"dropped": "chest_xray/train/NORMAL/IM-0009-0001.jpeg",
            "same_as": "chest_xray/test/NORMAL/IM-0003-0001.jpeg"} in report.duplicates
    assert report.macos_debris == 3
    assert report.outside_layout == ["README.txt"]
    marker = json.loads((tmp_path / "out" / "ingest.json").read_text())
    assert marker["counts"]["test"] == {"NORMAL": 1, "PNEUMONIA": 1}


def test_zip_source_gives_the_same_tree(tmp_path):
    tree = _archive_like_tree(tmp_path / "src")
    archive = tmp_path / "archive.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(tree.rglob("*")):
            zipped.write(path, path.relative_to(tree).as_posix())
    ingest(str(archive), tmp_path / "out")
    assert _normalised(tmp_path / "out") == EXPECTED


def test_a_second_ingest_into_the_same_folder_reuses_it(tmp_path):
    tree = _archive_like_tree(tmp_path / "src")
    first = ingest(str(tree), tmp_path / "out")
    (tree / "chest_xray" / "test" / "NORMAL" / "IM-0100-0001.jpeg").write_bytes(b"new")
    assert ingest(str(tree), tmp_path / "out").counts == first.counts


def test_a_users_non_empty_folder_is_never_written(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    code = main(["ingest", "--source", str(_archive_like_tree(tmp_path / "src")), "--out", str(tmp_path / "out")])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "notes.txt" not in error and str(tmp_path / "out") in error
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("source", ["missing-folder", "not-a-zip.txt"])
def test_bad_sources_fail_with_one_line_naming_them(tmp_path, capsys, source):
    (tmp_path / "not-a-zip.txt").write_text("hello")
    code = main(["ingest", "--source", str(tmp_path / source), "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and source in error


def test_a_tree_without_the_layout_is_refused(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "x.jpeg").write_bytes(b"x")
    assert main(["ingest", "--source", str(tmp_path / "src"), "--out", str(tmp_path / "out")]) == 2
    assert "no file in a <split>/<CLASS>/ folder" in capsys.readouterr().err


def _upload_tree(bucket, tree: Path, prefix: str) -> None:
    for path in tree.rglob("*"):
        if path.is_file():
            bucket.blob(f"{prefix}/{path.relative_to(tree).as_posix()}").upload_from_filename(str(path))


def test_gcs_source_through_the_real_client(tmp_path, bucket):
    _upload_tree(bucket, _archive_like_tree(tmp_path / "src"), "datasets/cxr")
    ingest(f"gs://{bucket.name}/datasets/cxr", tmp_path / "out")
    assert _normalised(tmp_path / "out") == EXPECTED


def test_cache_is_filled_once_then_read_instead_of_the_source(tmp_path, bucket):
    tree = _archive_like_tree(tmp_path / "src")
    cache = f"gs://{bucket.name}/cache/cxr"
    ingest(str(tree), tmp_path / "first", cache=cache)
    cached = sorted(b.name for b in gcs.list_blobs(gcs.parse_gcs_uri(cache)))
    assert "cache/cxr/ingest.json" in cached and "cache/cxr/test/NORMAL/IM-0003-0001.jpeg" in cached
    # The source is gone: a second ingest must come from the cache alone.
    second = ingest(str(tmp_path / "deleted-source"), tmp_path / "second", cache=cache)
    assert _normalised(tmp_path / "second") == EXPECTED
    assert second.source == cache


class _KaggleStub(BaseHTTPRequestHandler):
    """The two Kaggle API calls kagglehub makes for a dataset, and the archive it is redirected to.
    The network is stubbed here and only here: Kaggle itself cannot be reached from CI."""

    archive = b""
    authorizations: list[str] = []

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).authorizations.append(self.headers.get("Authorization", ""))
        if self.path.endswith("/datasets.DatasetApiService/GetDataset"):
            self._send(200, json.dumps({"currentVersionNumber": 2}).encode(), "application/json")
        elif self.path.endswith("/datasets.DatasetApiService/DownloadDataset"):
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{self.server.server_port}/archive.zip")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send(404, b"{}", "application/json")

    def do_GET(self):
        self._send(200, self.archive, "application/zip")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_kaggle_source_downloads_with_credentials_from_the_environment(tmp_path, monkeypatch, capsys):
    tree = _archive_like_tree(tmp_path / "src")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        for path in sorted(tree.rglob("*")):
            zipped.write(path, path.relative_to(tree).as_posix())
    _KaggleStub.archive = buffer.getvalue()
    _KaggleStub.authorizations = []
    try:
        server = ThreadingHTTPServer(("127.0.0.1", 7777), _KaggleStub)  # kagglesdk's TEST environment port
    except OSError:
        pytest.fail("port 7777, where kagglesdk's TEST environment points, is taken")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "TEST")
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "s3cr3t-kaggle-key")
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    try:
        assert main(["ingest", "--source", "kaggle", "--out", str(tmp_path / "out")]) == 0
    finally:
        server.shutdown()
    assert _normalised(tmp_path / "out") == EXPECTED
    assert any(a.startswith("Basic ") for a in _KaggleStub.authorizations)  # the key was sent, to Kaggle only
    assert "s3cr3t-kaggle-key" not in (tmp_path / "out" / "ingest.json").read_text()
