"""`cxr predict`: P(pneumonia) and the decision at the validation threshold for films given as files.

Every film goes through the functions training saw (cxr.serving.trained.read_film), so a test film gets the
probability `cxr evaluate` gave it. A file that cannot be read gets a row with the reason.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxr import settings
from cxr.data.images import UnreadableImage
from cxr.errors import UserError
from cxr.outputs import new_file
from cxr.serving.trained import find_threshold, load_model, read_film, read_preprocessing

COLUMNS = ["file", "probability", "decision", "threshold", "error"]


def shown_name(path: Path) -> str:
    """The file name as text that can be written anywhere: bytes that are not UTF-8 (a name from another
    system's encoding, which Python holds as lone surrogates) are shown as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def decision(probability: float, threshold: float) -> str:
    """The class name at `threshold`: PNEUMONIA when P >= threshold, as `cxr evaluate` counts it."""
    return settings.CLASS_NAMES[int(probability >= threshold)]


def predict_files(model_dir: Path, films: Sequence[Path], result_dir: Path | None = None,
                  threshold: float | None = None, batch_size: int = settings.BATCH_SIZE) -> pd.DataFrame:
    """One row per film, in the order given: file, probability, decision, threshold, error (empty when read)."""
    if not films:
        raise UserError("no FILM given")
    threshold = find_threshold(model_dir, result_dir, threshold)
    prep = read_preprocessing(model_dir)
    model = load_model(model_dir)
    rows: list[dict] = []
    pixels: list[np.ndarray] = []
    readable: list[int] = []
    for path in films:
        rows.append({"file": shown_name(path), "probability": np.nan, "decision": "", "threshold": threshold,
                     "error": ""})
        try:
            pixels.append(read_film(path, prep))
            readable.append(len(rows) - 1)
        except UnreadableImage as error:
            rows[-1]["error"] = str(error)
        except OSError as error:
            rows[-1]["error"] = f"unreadable file: {error.strerror or error}"
    for start in range(0, len(pixels), batch_size):
        batch = np.stack(pixels[start:start + batch_size])
        for index, probability in zip(readable[start:start + batch_size],
                                      model.predict_on_batch(batch).reshape(-1), strict=True):
            rows[index].update(probability=float(probability), decision=decision(float(probability), threshold))
    return pd.DataFrame(rows, columns=COLUMNS)


def write_predictions(table: pd.DataFrame, out: Path | None) -> None:
    """Write the table as CSV to `out`, or to stdout without one; never over an existing file, and `out`
    appears only once complete (cxr.outputs.new_file), so a failure never leaves a part that blocks a rerun."""
    if out is None:
        table.to_csv(sys.stdout, index=False)
        return
    with new_file(Path(out)) as handle:
        table.to_csv(handle, index=False)
