"""Fetch the dataset from Kaggle, a folder, a .zip or gs://, and normalise it to DIR/{split}/{class}/.

The real archive repeats itself (a nested `chest_xray/chest_xray/` copy) and carries macOS debris
(`__MACOSX/`, `._*`, `.DS_Store`); normalising keeps each distinct image once and reports what it dropped in
DIR/ingest.json. With a gs:// cache, a dataset fetched once is read from the cache on every later run.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from cxr import files, settings
from cxr.data import gcs
from cxr.data.progress import Progress
from cxr.errors import UserError
from cxr.outputs import OWN_FILES, claim, read_json

MARKER = files.INGEST_MARKER


@dataclass(frozen=True)
class SourceFile:
    """One file of a source, read lazily so that listing a 2 GB archive costs nothing."""

    path: str  # relative, with forward slashes
    size: int
    read: Callable[[], bytes]


@dataclass
class IngestReport:
    source: str
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    duplicates: list[dict[str, str]] = field(default_factory=list)  # {"dropped": path, "same_as": path}
    name_conflicts: list[dict[str, str]] = field(default_factory=list)  # same name, different bytes
    macos_debris: int = 0
    outside_layout: list[str] = field(default_factory=list)
    # Files left out and why: links out of the source tree (never followed), members that cannot be read.
    skipped: list[dict[str, str]] = field(default_factory=list)
    # The marker `cxr synth` writes beside its splits (its settings), carried into the folder: the films are drawn.
    synthetic: dict | None = None

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)


def folder_files(root: Path, skipped: list[dict[str, str]]) -> list[SourceFile]:
    """Every file under `root`. A symbolic link is followed only when it stays inside `root`: one pointing out
    of it (a file or a folder), a broken one, a loop of links, or anything that is neither a file nor a folder is
    appended to `skipped` with the reason, so nothing outside the source is read and nothing is dropped unsaid."""
    root = Path(root)
    inside = root.resolve()
    found = []
    for folder, folders, names in os.walk(root):
        for name in sorted(folders + names):
            path = Path(folder) / name
            relative = path.relative_to(root).as_posix()
            reason = _unreadable_entry(path, inside)
            if reason:
                skipped.append({"file": relative, "reason": reason})
            elif path.is_file():
                found.append(SourceFile(relative, path.stat().st_size, path.read_bytes))
    return sorted(found, key=lambda f: f.path)


def _unreadable_entry(path: Path, inside: Path) -> str | None:
    """Why `path` is left out of an ingest, or None for a file or folder to read."""
    if path.is_symlink():
        try:
            target = path.resolve(strict=True)
        except RuntimeError:  # Python 3.11 reports a loop of links so, 3.13 as OSError
            return "a loop of links (not followed)"
        except OSError as error:
            return "a loop of links (not followed)" if error.errno == errno.ELOOP else "a broken link"
        if not target.is_relative_to(inside):
            return "a link out of the source folder (not followed)"
    if not (path.is_file() or path.is_dir()):
        return "neither a file nor a folder"
    return None


def zip_files(archive: zipfile.ZipFile) -> list[SourceFile]:
    return [SourceFile(info.filename, info.file_size, lambda info=info: archive.read(info))
            for info in archive.infolist() if not info.is_dir()]


def gcs_files(path: gcs.GcsPath) -> list[SourceFile]:
    strip = len(path.prefix) + 1 if path.prefix else 0
    return [SourceFile(blob.name[strip:], blob.size or 0, blob.download_as_bytes)
            for blob in gcs.list_blobs(path) if not blob.name.endswith("/")]


def download_kaggle(handle: str = settings.KAGGLE_DATASET) -> Path:
    """Download (or reuse kagglehub's cache of) the Kaggle dataset; credentials come from the environment
    (KAGGLE_API_TOKEN, or KAGGLE_USERNAME and KAGGLE_KEY) and are never printed."""
    import kagglehub

    try:
        return Path(kagglehub.dataset_download(handle))
    except Exception as error:  # kagglehub raises many types; the user needs one line either way
        raise UserError(f"Kaggle download of {handle} failed ({type(error).__name__}): {error}. "
                        "Set KAGGLE_API_TOKEN, or KAGGLE_USERNAME and KAGGLE_KEY.") from None


def is_macos_debris(path: str) -> bool:
    parts = PurePosixPath(path).parts
    return "__MACOSX" in parts or parts[-1] == ".DS_Store" or parts[-1].startswith("._")


def layout_place(path: str) -> tuple[str, str, str] | None:
    """(split, class, file name) when the file sits in a `<split>/<CLASS>/` folder at any depth, else None."""
    parts = PurePosixPath(path).parts
    if len(parts) < 3:
        return None
    split, class_name = parts[-3].lower(), parts[-2].upper()
    if split in settings.SPLITS and class_name in settings.CLASS_NAMES:
        return split, class_name, parts[-1]
    return None


def _order(file: SourceFile) -> tuple[int, int, str]:
    # The shallowest copy wins over the nested duplicate, and the official test split is read first, so an
    # image that also appears in train is kept in test (where the published numbers were measured).
    place = layout_place(file.path)
    split_rank = {"test": 0, "train": 1, "val": 2}.get(place[0] if place else "", 3)
    return len(PurePosixPath(file.path).parts), split_rank, file.path


def normalise(source_files: Iterable[SourceFile], out: Path, source: str,
              skipped: list[dict[str, str]] | None = None) -> IngestReport:
    """Copy the distinct images of `source_files` into out/{split}/{class}/ and describe what was left out
    (with `skipped`: what listing the source left out already)."""
    report = IngestReport(source=source, skipped=list(skipped or []))
    wanted: list[SourceFile] = []
    for file in source_files:
        if file.path == MARKER:
            continue  # a cached ingest's own marker
        if PurePosixPath(file.path).name == files.SYNTHETIC_MARKER:
            report.synthetic = _synthetic_marker(file, out)
        elif is_macos_debris(file.path):
            report.macos_debris += 1
        elif not files.is_utf8_name(file.path):
            report.skipped.append({"file": files.shown_name(file.path), "reason": files.NOT_UTF8_NAME})
            print(f"ingest: skipped {files.shown_name(file.path)}: {files.NOT_UTF8_NAME}", file=sys.stderr)
        elif layout_place(file.path) is None:
            report.outside_layout.append(file.path)
        else:
            wanted.append(file)
    if not wanted:
        raise UserError(f"no file in a <split>/<CLASS>/ folder (splits {', '.join(settings.SPLITS)}; classes "
                        f"{', '.join(settings.CLASS_NAMES)}) in {source}")
    wanted.sort(key=_order)
    progress = Progress("ingest", len(wanted), sum(f.size for f in wanted))
    kept_by_hash: dict[str, str] = {}
    kept_by_place: dict[tuple[str, str, str], str] = {}
    for file in wanted:
        try:
            data = file.read()
        except (OSError, zipfile.BadZipFile, zlib.error, EOFError) as error:  # a bad CRC, a truncated member
            report.skipped.append({"file": file.path, "reason": f"unreadable: {error}"})
            print(f"ingest: skipped {file.path}: unreadable: {error}", file=sys.stderr)
            continue
        progress.advance(file.size)
        place = layout_place(file.path)
        digest = hashlib.sha256(data).hexdigest()
        if digest in kept_by_hash:
            report.duplicates.append({"dropped": file.path, "same_as": kept_by_hash[digest]})
            continue
        if place in kept_by_place:
            report.name_conflicts.append({"dropped": file.path, "kept": kept_by_place[place]})
            continue
        kept_by_hash[digest] = kept_by_place[place] = file.path
        target = out.joinpath(*place)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        split, class_name, _ = place
        counts = report.counts.setdefault(split, {})
        counts[class_name] = counts.get(class_name, 0) + 1
    return report


def _synthetic_marker(file: SourceFile, out: Path) -> dict:
    """The synth marker's settings, copied to out/ (so a cached copy of the folder still says it): a damaged one
    still marks the films as drawn."""
    data = file.read()
    (out / files.SYNTHETIC_MARKER).write_bytes(data)
    try:
        recorded = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        recorded = None
    return recorded if isinstance(recorded, dict) else {"made_by": "cxr synth"}


def check_source(source: str) -> None:
    """Refuse, before any folder is claimed, a local source that is neither a folder nor a .zip archive (kaggle
    and gs:// are checked when they are read: that needs the network)."""
    if source == "kaggle" or gcs.is_gcs_uri(source):
        return
    path = Path(source)
    if path.is_dir():
        return
    if path.is_file() and zipfile.is_zipfile(path):
        return
    if path.exists():
        raise UserError(f"--source {source}: not a folder or a .zip archive")
    raise UserError(f"--source {source}: no such file or folder (use kaggle, a folder, a .zip or gs://...)")


def _files_of(source: str, stack: list, skipped: list[dict[str, str]]) -> list[SourceFile]:
    if source == "kaggle":
        return folder_files(download_kaggle(), skipped)
    if gcs.is_gcs_uri(source):
        return gcs_files(gcs.parse_gcs_uri(source))
    path = Path(source)
    if path.is_dir():
        return folder_files(path, skipped)
    if path.is_file() and zipfile.is_zipfile(path):
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as error:
            raise UserError(f"--source {source}: a damaged .zip archive ({error})") from None
        stack.append(archive)
        return zip_files(archive)
    if path.exists():
        raise UserError(f"--source {source}: not a folder or a .zip archive")
    raise UserError(f"--source {source}: no such file or folder (use kaggle, a folder, a .zip or gs://...)")


def ingest(source: str, out: Path, cache: str | None = None) -> IngestReport:
    """Bring the dataset from `source` into `out`, through the gs:// `cache` when one is given. A rerun with the
    same source on a finished `out` reuses it."""
    out = Path(out)
    if cache:  # a cached dataset is read without its source, which need not exist then
        gcs.parse_gcs_uri(cache)
    else:
        check_source(source)
    with claim(out, "ingest", {"source": source, "cache": cache}) as output:
        if output.finished and (out / MARKER).is_file():
            print(f"ingest: {out} already holds a complete ingest; reusing it", file=sys.stderr)
            return IngestReport(**read_json(out / MARKER))
        try:
            report = _ingest(source, out, cache)
        except gcs.CLOUD_ERRORS as error:
            raise gcs.one_line(error) from None
        output.finish()
    return report


def _ingest(source: str, out: Path, cache: str | None) -> IngestReport:
    cache_path = gcs.parse_gcs_uri(cache) if cache else None
    from_cache = cache_path is not None and gcs.exists(cache_path, MARKER)
    if from_cache:
        print(f"ingest: reading the cached dataset at {cache_path}", file=sys.stderr)
    open_archives: list[zipfile.ZipFile] = []
    skipped: list[dict[str, str]] = []
    try:
        source_files = gcs_files(cache_path) if from_cache else _files_of(source, open_archives, skipped)
        report = normalise(source_files, out, str(cache_path) if from_cache else source, skipped)
    except BaseException:
        for child in out.iterdir():  # our own half-written output; claim() refused a folder holding others'
            if child.name not in OWN_FILES:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise
    finally:
        for archive in open_archives:
            archive.close()
    for item in skipped:
        print(f"ingest: skipped {item['file']}: {item['reason']}", file=sys.stderr)
    (out / MARKER).write_text(report.to_json())
    if cache_path is not None and not from_cache:
        uploads = [p for p in out.rglob("*") if p.is_file() and p.name not in OWN_FILES]
        print(f"ingest: uploading to the cache {cache_path}", file=sys.stderr)
        gcs.upload_folder(uploads, out, cache_path, last=MARKER,
                          progress=Progress("cache upload", len(uploads), sum(p.stat().st_size for p in uploads)))
    return report
