"""The model card section of report.html (Mitchell et al. 2019, "Model Cards for Model Reporting"): what the
model was trained and tested on, what it is for and not for, how well it does with intervals, the threshold it
decides at, and what is known to limit it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from cxr import settings
from cxr.results.render import model_card_section

_METRICS = ("accuracy", "sensitivity", "specificity", "precision", "f1")


def _splits(stats: Mapping, manifest: pd.DataFrame | None, test_patients: int | None) -> list[list[str]]:
    """One row per split: its films per class, in all, and its patients (from the manifest; else only the
    test split's, from the metrics)."""
    rows = []
    for split in settings.SPLITS:
        counts = stats["counts"][split]
        if manifest is not None:
            patients = str(manifest.loc[manifest["split"] == split, "patient_id"].nunique())
        else:
            patients = str(test_patients) if split == "test" and test_patients is not None else "n/a"
        rows.append([split, *(str(counts[c]) for c in settings.CLASS_NAMES), str(sum(counts.values())), patients])
    return rows


def data_origin(stats: Mapping) -> tuple[str, str | None]:
    """What the data is, from stats.json's "dataset" record (cxr.provenance): ("synthetic", source) for films
    `cxr synth` drew, ("kaggle", the dataset's handle) for the Kaggle archive as `cxr ingest --source kaggle`
    fetched it, ("source", what ingest read) for any other folder, archive or bucket, ("unknown", None) where
    stats.json predates the record."""
    dataset = stats.get("dataset") or {}
    source = dataset.get("source")
    if dataset.get("synthetic"):
        return "synthetic", source
    if source == "kaggle":
        return "kaggle", settings.KAGGLE_DATASET
    if source:
        return "source", source
    return "unknown", None


def model_card_html(stats: Mapping, leaderboard: Sequence[Mapping], metrics: Mapping[str, Mapping],
                    explanations: Sequence[Mapping] = (), *, chosen: str | None = None,
                    manifest: pd.DataFrame | None = None) -> str:
    """The model card as an HTML section.

    stats: the data's stats.json (its splits, and what the data is: data_origin); leaderboard: the report's rows
    (dicts with at least `backbone`, the row's name, and `roc_auc`; `regime`, `learning_rate` (the chosen one)
    and `candidates` (how many it was chosen among) where known); metrics: row name ->
    its metrics.json (intervals and thresholds); explanations: the explain.json summaries made; chosen: the row
    the card is for (default the leaderboard's first); manifest: the data's manifest.csv, for patients per split
    (else only test patients).
    """
    if not leaderboard:
        raise ValueError("model_card_html needs at least one leaderboard row")
    chosen = chosen or leaderboard[0]["backbone"]
    row = next((r for r in leaderboard if r["backbone"] == chosen), {})
    card = metrics[chosen]
    threshold = card["thresholds"]["validation"]
    origin, source = data_origin(stats)
    return model_card_section(
        chosen=chosen, backbone=card.get("backbone", chosen), regime=row.get("regime", card.get("regime")),
        learning_rate=row.get("learning_rate"), candidates=row.get("candidates"),
        threshold=threshold, image_size=stats.get("settings", {}).get("image_size", "n/a"), origin=origin,
        source=source, fingerprint=(stats.get("dataset") or {}).get("fingerprint"),
        split_mode=stats.get("settings", {}).get("split", settings.SPLIT_MODE),
        skipped=len(stats.get("skipped", [])),
        split_headings=["split", *settings.CLASS_NAMES, "films", "patients"],
        splits=_splits(stats, manifest, card.get("test_patients")),
        test_images=card["test_images"], test_patients=card.get("test_patients", "n/a"), roc_auc=card["roc_auc"],
        metric_names=_METRICS,
        operating_points=[(f"{card['thresholds']['default']:.2f} (default)", card["at_default_threshold"]),
                          (f"{threshold:.3f} (chosen on validation)", card["at_validation_threshold"])],
        others=[(r["backbone"], metrics[r["backbone"]]["roc_auc"]) for r in leaderboard if r["backbone"] in metrics],
        explanations=list(explanations), games=[e for e in explanations if e.get("pointing_game")])
