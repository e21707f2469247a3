"""Fetch the dataset from Kaggle, a folder, a .zip or gs://, and normalise it to DIR/{split}/{class}/.

The real archive repeats itself (a nested `chest_xray/chest_xray/` copy) and carries macOS debris
(`__MACOSX/`, `._*`, `.DS_Store`); normalising keeps each distinct image once and reports what it dropped in
DIR/ingest.json. With a gs:// cache, a dataset fetched once is read from the cache on every later run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from cxr import files, settings
from cxr.data import gcs
from cxr.data.progress import Progress
from cxr.errors import UserError

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

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)


def folder_files(root: Path) -> list[SourceFile]:
    return [SourceFile(p.relative_to(root).as_posix(), p.stat().st_size, p.read_bytes)
            for p in sorted(root.rglob("*")) if p.is_file()]


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


def normalise(source_files: Iterable[SourceFile], out: Path, source: str) -> IngestReport:
    """Copy the distinct images of `source_files` into out/{split}/{class}/ and describe what was left out."""
    report = IngestReport(source=source)
    wanted: list[SourceFile] = []
    for file in source_files:
        if file.path == MARKER:
            continue  # a cached ingest's own marker
        if is_macos_debris(file.path):
            report.macos_debris += 1
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
        data = file.read()
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


def _prepare_output(out: Path) -> bool:
    """True when `out` already holds a complete ingest; raises when it holds anything else."""
    if (out / MARKER).is_file():
        return True
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} is not empty and holds no {MARKER}; choose an empty or new --out folder")
    out.mkdir(parents=True, exist_ok=True)
    return False


def _files_of(source: str, stack: list) -> list[SourceFile]:
    if source == "kaggle":
        return folder_files(download_kaggle())
    if gcs.is_gcs_uri(source):
        return gcs_files(gcs.parse_gcs_uri(source))
    path = Path(source)
    if path.is_dir():
        return folder_files(path)
    if path.is_file() and zipfile.is_zipfile(path):
        archive = zipfile.ZipFile(path)
        stack.append(archive)
        return zip_files(archive)
    if path.exists():
        raise UserError(f"--source {source}: not a folder or a .zip archive")
    raise UserError(f"--source {source}: no such file or folder (use kaggle, a folder, a .zip or gs://...)")


def ingest(source: str, out: Path, cache: str | None = None) -> IngestReport:
    """Bring the dataset from `source` into `out`, through the gs:// `cache` when one is given."""
    out = Path(out)
    if _prepare_output(out):
        print(f"ingest: {out} already holds a complete ingest; reusing it", file=sys.stderr)
        return IngestReport(**json.loads((out / MARKER).read_text()))
    cache_path = gcs.parse_gcs_uri(cache) if cache else None
    from_cache = cache_path is not None and gcs.exists(cache_path, MARKER)
    if from_cache:
        print(f"ingest: reading the cached dataset at {cache_path}", file=sys.stderr)
    open_archives: list[zipfile.ZipFile] = []
    try:
        source_files = gcs_files(cache_path) if from_cache else _files_of(source, open_archives)
        report = normalise(source_files, out, source=str(cache_path) if from_cache else source)
    except BaseException:
        for child in out.iterdir():  # our own half-written output: `out` was empty when we started
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise
    finally:
        for archive in open_archives:
            archive.close()
    (out / MARKER).write_text(report.to_json())
    if cache_path is not None and not from_cache:
        total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        count = sum(1 for p in out.rglob("*") if p.is_file())
        print(f"ingest: uploading to the cache {cache_path}", file=sys.stderr)
        gcs.upload_folder(out, cache_path, last=MARKER, progress=Progress("cache upload", count, total))
    return report
