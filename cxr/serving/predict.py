"""`cxr predict`: P(pneumonia) and the decision at the validation threshold for films given as files or folders.

Every film goes through the functions training saw (cxr.serving.trained.read_film), so a test film gets the
probability `cxr evaluate` gave it. A file that cannot be read gets a row with the reason; when no film at all
can be read, nothing is written and the command says why in one line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxr import files, settings
from cxr.data.images import UnreadableImage
from cxr.errors import UserError
from cxr.outputs import new_file, owner_of
from cxr.serving.trained import (
    decide,
    find_threshold,
    load_model,
    probabilities_of,
    read_film,
    read_preprocessing,
)

COLUMNS = ["file", "probability", "decision", "threshold", "error"]


def films_in(folder: Path) -> list[Path]:
    """The JPEG and PNG files under `folder`, recursively, sorted by their path inside it (the same order on
    every machine). Hidden files and folders (".cxr-output.json", macOS "._" files) are left out, and symlinked
    folders are not followed, so a symlink loop cannot recurse."""
    found = []
    for root, folders, names in os.walk(folder):  # followlinks=False
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        found += [Path(root) / name for name in sorted(names)
                  if not name.startswith(".") and name.lower().endswith(settings.IMAGE_SUFFIXES)]
    return sorted(found, key=lambda path: path.relative_to(folder).parts)


def expand_films(paths: Sequence[Path]) -> list[Path]:
    """Each FILM argument as given, a folder replaced by the films in it (films_in); a folder without any is
    one line naming it."""
    films: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            inside = films_in(path)
            if not inside:
                raise UserError(f"{path} holds no film ({', '.join(settings.IMAGE_SUFFIXES)} files, searched "
                                "recursively)")
            films += inside
        else:
            films.append(path)
    return films


def check_batch_size(batch_size: int) -> None:
    if not 1 <= batch_size <= settings.MAX_BATCH_SIZE:
        raise UserError(f"--batch-size must be between 1 and {settings.MAX_BATCH_SIZE}, got {batch_size}")


def predict_files(model_dir: Path, films: Sequence[Path], result_dir: Path | None = None,
                  threshold: float | None = None, batch_size: int = settings.BATCH_SIZE) -> pd.DataFrame:
    """One row per film, in the order given (a folder: its films in films_in's order): file, probability,
    decision, threshold, error (empty when read). The films are read before the model is loaded: when none can
    be read, one line says why."""
    check_batch_size(batch_size)
    films = expand_films(films)
    if not films:
        raise UserError("no FILM given")
    threshold = find_threshold(model_dir, result_dir, threshold)
    prep = read_preprocessing(model_dir)
    rows: list[dict] = []
    pixels: list[np.ndarray] = []
    readable: list[int] = []
    for path in films:
        rows.append({"file": files.shown_name(path), "probability": np.nan, "decision": "", "threshold": threshold,
                     "error": ""})
        try:
            pixels.append(read_film(path, prep))
            readable.append(len(rows) - 1)
        except UnreadableImage as error:
            rows[-1]["error"] = str(error)
        except OSError as error:
            rows[-1]["error"] = f"unreadable file: {error.strerror or error}"
    if not pixels:
        first = rows[0]
        raise UserError(f"nothing to predict: none of the {len(rows)} film(s) can be read ({first['file']}: "
                        f"{first['error']}" + (", ..." if len(rows) > 1 else "") + ")")
    probabilities = probabilities_of(load_model(model_dir), pixels, batch_size)
    for index, probability, decision in zip(readable, probabilities, decide(probabilities, threshold), strict=True):
        rows[index].update(probability=float(probability), decision=decision)
    return pd.DataFrame(rows, columns=COLUMNS)


def check_output(out: Path) -> None:
    """Before any work: `--out` must be a new file outside every folder a cxr command owns (a CSV among a
    training's files would be taken for one of them)."""
    if out.exists():
        raise UserError(f"{out} exists already; choose another --out")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: cannot write it, the folder {out.parent} does not exist; create it first")
    owner = owner_of(out.parent)
    if owner is not None:
        written = f" (written by {', '.join(f'`cxr {command}`' for command in owner[1])})" if owner[1] else ""
        raise UserError(f"--out {out} is inside {owner[0]}, a folder cxr owns{written}; write the CSV elsewhere")


def write_predictions(table: pd.DataFrame, out: Path | None) -> None:
    """Write the table as CSV to `out`, or to stdout without one; never over an existing file, and `out`
    appears only once complete (cxr.outputs.new_file), so a failure never leaves a part that blocks a rerun."""
    if out is None:
        table.to_csv(sys.stdout, index=False)
        return
    out = Path(out)
    check_output(out)
    with new_file(out) as handle:
        table.to_csv(handle, index=False)
