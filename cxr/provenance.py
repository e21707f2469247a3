"""What each artifact was made from, and the checks that refuse to combine artifacts that do not belong together.

The records (docs/provenance.md):

- a dataset (`cxr preprocess`'s folder): its fingerprint (SHA-256 of manifest.csv and every TFRecord shard, so
  the same films, labels, patients and splits at the same stored size give the same one), the size the films are
  stored at, and where the films came from (the source `cxr ingest` read, synthetic or not);
- a training: the content hash of its train_metrics.json, which `cxr evaluate` copies beside its result, so a
  model folder and the result of its evaluation name the same training without any shared path;
- what each output was made from: train_metrics.json the data; metrics.json the training (backbone, regime, seed,
  recipe) and the data it was trained and evaluated on; explain.json the training and the data; the export the
  training.

Every command that combines artifacts checks them here and refuses a mismatch with one line naming both. Files
written before these records existed carry none: they are checked by what they do hold (the training's hash, the
backbone), never refused for the lack.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from cxr import artifacts, files
from cxr.errors import UserError
from cxr.outputs import read_json
from cxr.training.plan import PER_RUN, TrainSettings, row_key, row_name

FINGERPRINT_DIGITS = 16  # 64 bits of SHA-256: no two datasets a user holds collide
SHOWN_DIGITS = 8  # how many of them a message shows


# --- Datasets ------------------------------------------------------------------------------------------------

def _digest(paths: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:FINGERPRINT_DIGITS]


def fingerprint(data_dir: Path) -> str:
    """The dataset's fingerprint: SHA-256 of manifest.csv and every TFRecord shard, in name order."""
    data_dir = Path(data_dir)
    manifest = data_dir / files.MANIFEST
    if not manifest.is_file():
        raise UserError(f"missing {manifest} (run `cxr preprocess` first)")
    return _digest([manifest, *sorted(data_dir.glob("*.tfrecord"))])


def origin(raw_dir: Path) -> dict:
    """Where the films under raw_dir came from: {"source": what `cxr ingest` read, "synthetic": whether
    `cxr synth` drew them}. From ingest.json where ingest wrote the folder, else from the synth marker where the
    folder is synth's own chest_xray/, else the folder itself, not known to be synthetic."""
    raw_dir = Path(raw_dir)
    marker = raw_dir / files.SYNTHETIC_MARKER
    if (raw_dir / files.INGEST_MARKER).is_file():
        report = read_json(raw_dir / files.INGEST_MARKER)
        return {"source": str(report.get("source", raw_dir)), "synthetic": bool(report.get("synthetic"))}
    return {"source": str(raw_dir.resolve()), "synthetic": marker.is_file()}


def dataset_record(data_dir: Path, raw_dir: Path, stored_size: int) -> dict:
    """What `cxr preprocess` records in stats.json under "dataset", once its files are written."""
    return {"fingerprint": fingerprint(data_dir), "stored_size": int(stored_size), **origin(raw_dir)}


def data_record(data_dir: Path) -> dict:
    """The dataset in data_dir as the other records name it: fingerprint, stored_size, source, synthetic (None
    where stats.json predates them) and its folder."""
    data_dir = Path(data_dir)
    stats = artifacts.read_stats(data_dir / files.STATS)
    recorded = stats.get("dataset") or {"fingerprint": fingerprint(data_dir), "source": None, "synthetic": None}
    return {**recorded, "stored_size": int(stats["settings"]["image_size"]), "folder": str(data_dir.resolve())}


def stored_size(data_dir: Path) -> int:
    return int(artifacts.read_stats(Path(data_dir) / files.STATS)["settings"]["image_size"])


def describe_data(record: Mapping) -> str:
    return f"{record['folder']} (data {record['fingerprint'][:SHOWN_DIGITS]}, stored at {record['stored_size']} px)"


# --- Trainings -----------------------------------------------------------------------------------------------

def training_id(folder: Path) -> str:
    """The training a model or result folder holds: the hash of its train_metrics.json (evaluate copies the file
    byte for byte, so a model and the result of its evaluation give the same one)."""
    path = Path(folder) / files.TRAIN_METRICS
    if not path.is_file():
        raise UserError(f"missing {path} (written by `cxr train`)")
    return _digest([path])


def recipe(trained: Mapping) -> dict:
    """The training's settings but the per-run ones: those that name the comparison row (backbone, regime), its
    searched learning rate and the seed. What every result of one row must share."""
    per_run = {option.name for option in TrainSettings.options(PER_RUN)}
    return {key: value for key, value in trained["settings"].items() if key not in per_run}


def model_record(folder: Path) -> dict:
    """The training in a model (or result) folder: its id, backbone, regime, seed, recipe, folder, and the data
    it was trained on (None where train_metrics.json predates the record)."""
    folder = Path(folder)
    trained = artifacts.read_train_metrics(folder / files.TRAIN_METRICS)
    return {"training_id": training_id(folder), "backbone": trained["backbone"],
            "regime": trained["settings"]["regime"], "seed": int(trained["settings"]["seed"]),
            "recipe": recipe(trained), "folder": str(folder.resolve()),
            "trained_on": trained.get("provenance", {}).get("data")}


def describe_model(record: Mapping) -> str:
    return f"{record['backbone']} · {record['regime']}, seed {record['seed']}, trained in {record['folder']}"


def evaluation_record(model_dir: Path, data_dir: Path) -> dict:
    """What `cxr evaluate` records in metrics.json under "provenance": the training and the data."""
    model = model_record(model_dir)
    return {"model": {k: v for k, v in model.items() if k != "trained_on"}, "trained_on": model["trained_on"],
            "data": data_record(data_dir)}


def evaluated_model(result_dir: Path) -> dict | None:
    """The training a result folder evaluated: from its train_metrics.json (the copy evaluate made; the folder
    it was trained in from metrics.json's record where that names the same training), else from metrics.json's
    record alone; None when neither says."""
    result_dir = Path(result_dir)
    recorded = artifacts.read_metrics(result_dir / files.METRICS).get("provenance", {}).get("model")
    if not (result_dir / files.TRAIN_METRICS).is_file():
        return dict(recorded) if recorded else None
    copy = model_record(result_dir)
    if recorded and recorded["training_id"] == copy["training_id"]:
        copy["folder"] = recorded["folder"]
    return copy


def evaluated_data(result_dir: Path) -> dict | None:
    """The data a result folder was evaluated on, None where metrics.json predates the record."""
    return artifacts.read_metrics(Path(result_dir) / files.METRICS).get("provenance", {}).get("data")


# --- Checks --------------------------------------------------------------------------------------------------

def check_result_of(model_dir: Path, result_dir: Path, option: str = "--result") -> None:
    """result_dir must hold the evaluation of model_dir's training (its threshold, its predictions)."""
    model = model_record(model_dir)
    evaluated = evaluated_model(result_dir)
    if evaluated is None:  # a metrics.json alone, from before the records: the backbone at least must agree
        backbone = artifacts.read_metrics(Path(result_dir) / files.METRICS)["backbone"]
        if backbone != model["backbone"]:
            raise UserError(f"{option} {result_dir} is the evaluation of a {backbone}, not of --model {model_dir} "
                            f"({describe_model(model)}); pass the folder `cxr evaluate --model {model_dir}` wrote")
        return
    if evaluated["training_id"] != model["training_id"]:
        raise UserError(f"{option} {result_dir} is the evaluation of another training ({describe_model(evaluated)})"
                        f" than --model {model_dir} ({describe_model(model)}); pass the folder "
                        f"`cxr evaluate --model {model_dir}` wrote")


def expected_stored_size(model_dir: Path) -> int | None:
    """The stored size of the films model_dir was trained on: preprocessing.json, else the training's data
    record; None where neither exists."""
    model_dir = Path(model_dir)
    if (model_dir / files.PREPROCESSING).is_file():
        return artifacts.read_preprocessing(model_dir / files.PREPROCESSING)["processed_size"]
    trained_on = model_record(model_dir)["trained_on"]
    return int(trained_on["stored_size"]) if trained_on else None


def check_stored_size(model_dir: Path, data_dir: Path, option: str = "--data") -> None:
    """data_dir's films must be stored at the size the model was trained on: the model has only seen films
    resized from that size, and `cxr predict` repeats that resize."""
    expected, stored = expected_stored_size(model_dir), stored_size(data_dir)
    if expected is not None and stored != expected:
        raise UserError(f"{option} {data_dir} stores its films at {stored} px, but --model {model_dir} was trained "
                        f"on films stored at {expected} px; use data preprocessed with --image-size {expected}")


def check_same_data(data_dir: Path, expected: Mapping | None, what: str, option: str = "--data") -> None:
    """data_dir must be the dataset `expected` records (`what` says whose record it is); nothing to check
    where there is no record."""
    if expected is None:
        return
    found = data_record(data_dir)
    if (found["fingerprint"], found["stored_size"]) != (expected["fingerprint"], int(expected["stored_size"])):
        raise UserError(f"{option} {describe_data(found)} is not the data {what} ({describe_data(expected)})")


class Evaluated(Protocol):
    """A result as the report holds it (cxr.results.collect.Result)."""
    folder: Path
    backbone: str
    regime: str
    metrics: dict
    training: dict


def _first_difference(items: Sequence[tuple[Evaluated, Mapping]], key) -> tuple | None:
    """The first two items whose key(record) differ, or None."""
    first = items[0]
    for other in items[1:]:
        if key(other[1]) != key(first[1]):
            return first, other
    return None


def _data_pairs(results: Sequence[Evaluated], which: str) -> list[tuple[Evaluated, Mapping]]:
    pairs = []
    for result in results:
        record = result.metrics.get("provenance", {}).get(which)
        if which == "trained_on" and record is None:
            record = result.training.get("provenance", {}).get("data")
        if record is not None:
            pairs.append((result, record))
    return pairs


def _check_data_of_results(results: Sequence[Evaluated]) -> None:
    evaluated = _data_pairs(results, "data")
    if evaluated:
        sizes = _first_difference(evaluated, lambda r: int(r["stored_size"]))
        if sizes:
            (a, ra), (b, rb) = sizes
            raise UserError(f"{a.folder} and {b.folder} were evaluated on two preprocessings, films stored at "
                            f"{ra['stored_size']} px and at {rb['stored_size']} px; compare results evaluated on one")
        data = _first_difference(evaluated, lambda r: r["fingerprint"])
        if data:
            (a, ra), (b, rb) = data
            raise UserError(f"{a.folder} was evaluated on {describe_data(ra)}, {b.folder} on {describe_data(rb)}; "
                            "every result of a report must be evaluated on the same data")
    trained = _data_pairs(results, "trained_on")
    if trained:
        data = _first_difference(trained, lambda r: (r["fingerprint"], int(r["stored_size"])))
        if data:
            (a, ra), (b, rb) = data
            raise UserError(f"{a.folder} was trained on {describe_data(ra)}, {b.folder} on {describe_data(rb)}; "
                            "the models of a report must be trained on the same data")


def _check_recipes(results: Sequence[Evaluated]) -> None:
    rows: dict[tuple, Evaluated] = {}
    for result in results:
        first = rows.setdefault(row_key(result), result)
        ours, theirs = recipe(result.training), recipe(first.training)
        changed = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        if changed:
            shown = "; ".join(f"{k} {theirs.get(k)!r} and {ours.get(k)!r}" for k in changed)
            raise UserError(f"{first.folder} and {result.folder} are results of one row ({row_name(row_key(result))})"
                            f" but were trained with other settings ({shown}); the results of one row may differ "
                            "only in the learning rate (its candidates) and the seed")


def check_results(results: Sequence[Evaluated]) -> None:
    """The results of one report belong together: evaluated on the same data at the same stored size, their
    models trained on the same data, and the seeds of a row (one backbone in one regime) trained with the same
    settings but the seed."""
    if results:
        _check_data_of_results(results)
        _check_recipes(results)


def check_report_data(data_dir: Path, results: Sequence[Evaluated]) -> None:
    """`cxr report --data` must be the data the results were evaluated on (its model card describes it)."""
    for result, record in _data_pairs(results, "data")[:1]:
        check_same_data(data_dir, record, f"{result.folder} was evaluated on")
    if not _data_pairs(results, "data"):
        stored_size(data_dir)  # at least a readable stats.json


def check_explanation(folder: Path, summary: Mapping, results: Sequence[Evaluated]) -> None:
    """An explanation given to `cxr report` must explain one of the report's trainings, on the data they were
    evaluated on."""
    recorded = summary.get("provenance")
    if recorded is None:  # explain.json from before the records: the backbone at least
        if summary["backbone"] not in {r.backbone for r in results}:
            raise UserError(f"--explanations {folder} explains a {summary['backbone']}, which none of the results "
                            "given is")
        return
    ids = {training_id(r.folder): r for r in results}
    model = recorded["model"]
    if model["training_id"] not in ids:
        raise UserError(f"--explanations {folder} explains {describe_model(model)}, a training none of the results "
                        "given evaluated; explain the models of these results")
    result = ids[model["training_id"]]
    data = result.metrics.get("provenance", {}).get("data")
    if data is not None and (recorded["data"]["fingerprint"], int(recorded["data"]["stored_size"])) != (
            data["fingerprint"], int(data["stored_size"])):
        raise UserError(f"--explanations {folder} was made on {describe_data(recorded['data'])}, but "
                        f"{result.folder} was evaluated on {describe_data(data)}")


def explanation_record(model_dir: Path, result_dir: Path, data_dir: Path) -> dict:
    """What `cxr explain` records in explain.json under "provenance"."""
    model = model_record(model_dir)
    return {"model": {k: v for k, v in model.items() if k != "trained_on"}, "result": str(Path(result_dir).resolve()),
            "data": data_record(data_dir)}


def export_record(model_dir: Path, result_dir: Path | None) -> dict:
    """What `cxr export` records in cxr_export.json: the training it serves and where its threshold came from."""
    model = model_record(model_dir)
    return {"model": {k: v for k, v in model.items() if k != "trained_on"}, "trained_on": model["trained_on"],
            "result": str(Path(result_dir).resolve()) if result_dir is not None else None}

