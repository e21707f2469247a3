"""Raw Kaggle-layout images to sharded TFRecords, a manifest and statistics, with a leak-free split.

Decoding and resizing run in one worker process per core; the parent writes the TFRecords in input order, so
the output is the same for the same input whatever the core count.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from cxr import files, provenance, settings
from cxr.data.images import UnreadableImage, decode_resized
from cxr.data.patients import identify
from cxr.data.progress import Progress
from cxr.data.split import patient_split, patients_in_several_splits
from cxr.errors import UserError
from cxr.outputs import claim, read_json, write_atomically


@dataclass(frozen=True)
class Settings:
    image_size: int = settings.PROCESSED_IMAGE_SIZE
    val_fraction: float = settings.VAL_FRACTION
    split: str = settings.SPLIT_MODE
    seed: int = settings.SEED


def scan_raw(raw: Path) -> pd.DataFrame:
    """One row per file under raw/{split}/{class}/: official_split, class_name, label, patient_id, subtype,
    parsed_name, source (the path relative to raw). Raises when a split or class folder is missing."""
    rows = []
    for split in settings.SPLITS:
        for label, class_name in enumerate(settings.CLASS_NAMES):
            folder = raw / split / class_name
            if not folder.is_dir():
                raise UserError(f"missing folder {folder}: expected {raw}/{{{','.join(settings.SPLITS)}}}/"
                                f"{{{','.join(settings.CLASS_NAMES)}}}/ (run `cxr ingest` first)")
            for path in sorted(p for p in folder.iterdir() if p.is_file()):
                identity = identify(path.name)
                rows.append({"official_split": split, "class_name": class_name, "label": label,
                             "patient_id": identity.patient_id, "subtype": identity.subtype,
                             "parsed_name": identity.parsed, "source": path.relative_to(raw).as_posix()})
    return pd.DataFrame(rows)


def assign_splits(images: pd.DataFrame, options: Settings) -> pd.Series:
    """The split each image is written to, by `options.split` ("patient" or "official")."""
    if options.split == "official":
        return images["official_split"].copy()
    if options.split != "patient":
        raise UserError(f"--split must be one of {', '.join(settings.SPLIT_MODES)}, got {options.split!r}")
    split = images["official_split"].copy()
    pool = images[images["official_split"] != "test"]
    split[pool.index] = patient_split(pool, options.val_fraction, options.seed)
    return split


def _decode_job(job: tuple[str, int]) -> tuple[bytes | None, str | None]:
    path, size = job
    try:
        return decode_resized(Path(path).read_bytes(), size), None
    except UnreadableImage as error:
        return None, str(error)
    except OSError as error:
        return None, f"unreadable file: {error.strerror or error}"


def _example(png: bytes, row: pd.Series) -> bytes:
    import tensorflow as tf

    def feature(value: bytes | int) -> tf.train.Feature:
        if isinstance(value, int):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    return tf.train.Example(features=tf.train.Features(feature={
        "image": feature(png),
        "label": feature(int(row["label"])),
        "patient_id": feature(row["patient_id"].encode()),
        "source": feature(row["source"].encode()),
    })).SerializeToString()


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def preprocess(raw: Path, out: Path, options: Settings = Settings(), workers: int | None = None) -> dict:
    """Write out/{split}-NNNNN-of-NNNNN.tfrecord, out/manifest.csv and out/stats.json; return the stats.
    A rerun with the same settings on a finished `out` reuses it."""
    raw, out = Path(raw), Path(out)
    if not 32 <= options.image_size <= settings.MAX_IMAGE_SIZE:
        raise UserError(f"--image-size must be between 32 (the smallest backbone input) and "
                        f"{settings.MAX_IMAGE_SIZE}, got {options.image_size}")
    if not raw.is_dir():
        raise UserError(f"--raw {raw}: no such folder (run `cxr ingest` first)")
    with claim(out, "preprocess", asdict(options)) as output:
        if output.finished and (out / files.STATS).is_file():
            print(f"preprocess: {out} already holds this preprocessing; reusing it", file=sys.stderr)
            return read_json(out / files.STATS)
        stats = _preprocess(raw, out, options, workers)
        output.finish()
    return stats


def _preprocess(raw: Path, out: Path, options: Settings, workers: int | None) -> dict:
    import tensorflow as tf

    images = scan_raw(raw)
    if images.empty:
        raise UserError(f"no files in {raw}/{{{','.join(settings.SPLITS)}}}/{{{','.join(settings.CLASS_NAMES)}}}/")
    images["split"] = assign_splits(images, options)

    # A name that is not UTF-8 cannot go into the manifest or a TFRecord: such a film is skipped, not decoded.
    named = images["source"].map(files.is_utf8_name)
    jobs = [(str(raw / source), options.image_size) for source in images.loc[named, "source"]]
    workers = workers or os.cpu_count() or 1
    progress = Progress("preprocess", len(jobs), sum(os.path.getsize(path) for path, _ in jobs))
    # spawn, not fork: the parent has TensorFlow's threads running, and forking those can deadlock.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        results = iter(pool.imap(_decode_job, jobs, chunksize=8))
        decoded = []
        for source, utf8 in zip(images["source"], named, strict=True):
            decoded.append(next(results) if utf8 else (None, files.NOT_UTF8_NAME))
            if utf8:
                progress.advance(os.path.getsize(raw / source))

    images["kept"] = [png is not None for png, _ in decoded]
    skipped = [{"file": files.shown_name(source), "reason": reason}
               for source, (_, reason) in zip(images["source"], decoded, strict=True) if reason]
    for item in skipped:
        print(f"preprocess: skipped {item['file']}: {item['reason']}", file=sys.stderr)
    kept = images[images["kept"]]
    if kept.empty:
        raise UserError(f"no usable image in {raw}: all {len(images)} files were skipped")

    for split in settings.SPLITS:
        rows = kept[kept["split"] == split]
        count = max(1, math.ceil(len(rows) / settings.SHARD_SIZE))
        for shard in range(count):
            with tf.io.TFRecordWriter(str(out / shard_name(split, shard, count))) as writer:
                for index, row in rows.iloc[shard * settings.SHARD_SIZE:(shard + 1) * settings.SHARD_SIZE].iterrows():
                    writer.write(_example(decoded[index][0], row))

    columns = ["split", "label", "class_name", "patient_id", "subtype", "official_split", "source"]
    kept[columns].to_csv(out / files.MANIFEST, index=False)
    stats = {
        "settings": options.__dict__,
        # What every later artifact names this data by (cxr.provenance): its fingerprint, size and origin.
        "dataset": provenance.dataset_record(out, raw, options.image_size),
        "counts": {split: {name: int(((kept["split"] == split) & (kept["class_name"] == name)).sum())
                           for name in settings.CLASS_NAMES} for split in settings.SPLITS},
        "images": int(len(kept)),
        "skipped": skipped,
        "patients_in_several_splits": patients_in_several_splits(kept),
        "unparsed_patient_names": int((~kept["parsed_name"]).sum()),
    }
    write_atomically(out / files.STATS, json.dumps(stats, indent=2))
    return stats
