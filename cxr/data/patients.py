"""Patient identity from Kaggle file names (docs/decisions.md, "The dataset"), the key of every leak-free split."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePath

# NORMAL: IM-0115-0001.jpeg -> IM-0115; NORMAL2-IM-1427-0001.jpeg -> NORMAL2-IM-1427.
_NORMAL = re.compile(r"^(?P<patient>(?:NORMAL2-)?IM-\d+)-\d+$", re.IGNORECASE)
# PNEUMONIA: person1_bacteria_1.jpeg / person1_virus_6.jpeg -> person1, with the subtype.
_PNEUMONIA = re.compile(r"^(?P<patient>person\d+)_(?P<subtype>bacteria|virus)_\d+$", re.IGNORECASE)


@dataclass(frozen=True)
class ImageIdentity:
    patient_id: str
    subtype: str  # "normal", "bacteria", "virus", or "unknown"
    parsed: bool  # False: the name follows no known scheme and the image is its own patient


def identify(file_name: str) -> ImageIdentity:
    """Patient and subtype of one image, from its file name alone.

    A name outside the Kaggle schemes becomes its own patient (the stem), so it can never leak across a split;
    `parsed=False` lets preprocessing count such files.
    """
    stem = PurePath(file_name).stem
    if match := _NORMAL.match(stem):
        return ImageIdentity(match["patient"], "normal", True)
    if match := _PNEUMONIA.match(stem):
        return ImageIdentity(match["patient"], match["subtype"].lower(), True)
    return ImageIdentity(stem, "unknown", False)
