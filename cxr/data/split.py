"""Leak-free splits: every image of a patient lands on the same side, and each class keeps its share."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxr.errors import UserError


def patient_split(images: pd.DataFrame, val_fraction: float, seed: int) -> pd.Series:
    """Assign each image to "train" or "val" so that no patient is on both sides.

    `images` needs columns `patient_id` and `class_name`. Within each class, patients are shuffled with
    `seed` and moved to val until val holds the class's share of images: stratified by class, grouped by
    patient, and the same for the same input and seed whatever the row order.
    """
    if not 0 < val_fraction < 1:
        raise UserError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    assignment = pd.Series("train", index=images.index, dtype=object)
    rng = np.random.default_rng(seed)
    for class_name in sorted(images["class_name"].unique()):
        of_class = images[images["class_name"] == class_name]
        sizes = of_class.groupby("patient_id").size().sort_index()  # sorted: independent of row order
        order = rng.permutation(len(sizes))
        target = val_fraction * len(of_class)
        chosen, taken = [], 0
        for index in order:
            if taken >= target:
                break
            chosen.append(sizes.index[index])
            taken += int(sizes.iloc[index])
        if len(chosen) == len(sizes):
            raise UserError(f"class {class_name} has {len(sizes)} patient(s): too few to split by patient "
                            f"with --val-fraction {val_fraction}")
        assignment[of_class.index[of_class["patient_id"].isin(chosen)]] = "val"
    return assignment


def patients_in_several_splits(images: pd.DataFrame) -> list[str]:
    """Patient ids whose images sit in more than one split (column `split`), sorted."""
    splits_per_patient = images.groupby("patient_id")["split"].nunique()
    return sorted(splits_per_patient[splits_per_patient > 1].index)
