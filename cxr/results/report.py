"""`cxr report`: the comparison across backbones and regimes, written into one folder: each row's learning rate
chosen on validation (tuning.csv and its graph), the seed's graphs, ROC curves, confusion matrices, calibration,
the leaderboard (csv, md) with paired tests against the best model, an ensemble, the spread over seeds, and one
self-contained report.html (images embedded) that opens offline and in the KFP UI.

This module only puts the pieces together: cxr.results.collect reads the results, .tuning chooses each row's
learning rate, .leaderboard computes the rows, .plots draws, .render writes the text.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from cxr import artifacts, files, provenance, settings
from cxr.errors import UserError
from cxr.failures import Failure
from cxr.outputs import OWN_FILES, claim
from cxr.results import collect, plots, render, tuning
from cxr.results import leaderboard as board
from cxr.results.collect import ENSEMBLE, Contender, Result

# The seed's test accuracies (the original Kaggle notebook's README), from an image-level re-split that leaks
# patients: shown for reference only.
SEED_TEST_ACCURACY = {"MobileNet": 0.9769, "InceptionV3": 0.9556, "Xception": 0.9912, "ResNet50": 0.9960,
                      "VGG16": 0.9944}
FIGURES = (files.COMPARISON_PLOT, files.ROC_PLOT, files.CALIBRATION_PLOT, files.CONFUSION_PLOT, files.TUNING_PLOT)


def write_report(result_dirs: Sequence[Path], out: Path, samples: int = settings.BOOTSTRAP_SAMPLES,
                 explain_dirs: Sequence[Path] = (), data_dir: Path | None = None,
                 ) -> tuple[dict[str, Path], list[Failure]]:
    """Write every graph, the leaderboard (csv, md), the learning-rate candidates (tuning.csv), the ensemble's
    metrics and report.html into `out`; return file name -> path, and the failed trainings. Each row (a backbone
    in a regime) is ranked at the learning rate with its best validation ROC AUC (cxr.results.tuning). Folders
    holding failure.json are listed as missing; with none finished, the leaderboard and report.html say so. With
    `explain_dirs` (of `cxr explain`) the report shows where each backbone looks (at the chosen learning rates);
    with `data_dir` (of `cxr preprocess`) it ends with a model card.

    Every input is read and checked before `out` is claimed (so a corrected rerun into the same `out` is not
    refused): the results must belong together, the explanations must explain their trainings on their data, and
    `data_dir` must be the data they were evaluated on (cxr.provenance)."""
    if not result_dirs:
        raise UserError("no result folders given")
    results, missing, notes = collect.gather(result_dirs)
    collect.refuse_duplicates(results)
    provenance.check_results(results)
    explain_dirs = sorted(Path(d) for d in explain_dirs)
    for folder in explain_dirs:
        provenance.check_explanation(folder, artifacts.read_explanation(folder).summary, results)
    card_data = None
    if data_dir is not None:
        provenance.check_report_data(data_dir, results)
        card_data = _card_data(Path(data_dir))
    for note in notes:
        print(f"report: {note}", file=sys.stderr)
    out = Path(out)
    with claim(out, "report", {"results": sorted(str(Path(d).resolve()) for d in result_dirs), "samples": samples,
                               "explanations": [str(d.resolve()) for d in explain_dirs],
                               "data": str(Path(data_dir).resolve()) if data_dir else None}) as output:
        if output.finished and (out / files.REPORT_HTML).is_file():
            print(f"report: {out} already holds this report; reusing it", file=sys.stderr)
            return {p.name: p for p in sorted(out.iterdir()) if p.name not in OWN_FILES}, missing
        written = _write(results, missing, notes, out, samples, explain_dirs, card_data)
        output.finish()
    return written, missing


def _card_data(data_dir: Path) -> tuple[dict, pd.DataFrame | None]:
    """What the model card says of the data: stats.json (splits, origin) and manifest.csv (patients), checked."""
    manifest = data_dir / files.MANIFEST
    return (artifacts.read_stats(data_dir / files.STATS),
            artifacts.read_manifest(manifest) if manifest.is_file() else None)


def _model_card(results: list[Result], table: pd.DataFrame, summaries: list[dict],
                card_data: tuple[dict, pd.DataFrame | None]) -> str:
    """The model card of the best single contender; its data's stats.json holds the splits and the origin."""
    from cxr.results.model_card import model_card_html

    rows = [{"backbone": board.row_name(row), "regime": row["regime"], "roc_auc": row["roc_auc"],
             "learning_rate": row["learning_rate"], "candidates": row["candidates"]}
            for row in table.to_dict("records") if not board.is_ensemble(row)]
    metrics: dict[str, dict] = {}
    for result in results:  # the first seed's metrics stand for the contender's thresholds and intervals
        metrics.setdefault(collect.row_label(collect.row_key(result)), result.metrics)
    stats, manifest = card_data
    return model_card_html(stats, rows, metrics, summaries, manifest=manifest)


def _ranked_explanations(explain_dirs: Sequence[Path], ranked: Sequence[Result]) -> list[Path]:
    """The explanations of the ranked trainings (each row's chosen learning rate): a candidate that was not chosen
    is not in the comparison, so neither is where it looks. An explain.json from before the records names only its
    backbone and is kept."""
    ids = {provenance.training_id(r.folder) for r in ranked}
    kept = []
    for folder in explain_dirs:
        recorded = artifacts.read_explanation(folder).summary.get("provenance")
        if recorded is None or recorded["model"]["training_id"] in ids:
            kept.append(folder)
    return kept


def _sections(results: list[Result], table: pd.DataFrame, explain_dirs: Sequence[Path],
              card_data: tuple[dict, pd.DataFrame | None] | None, out: Path) -> list[str]:
    """Where each backbone looks (Grad-CAM, when explanations were made) and the model card of the best single
    contender (when the data folder is known); `results` are the ranked trainings."""
    from cxr.results.explain import explanations_html

    sections = [explanations_html(explain_dirs, out)] if explain_dirs else []
    if card_data is not None and not table[table["backbone"] != ENSEMBLE].empty:
        summaries = [artifacts.read_explanation(d).summary for d in explain_dirs]
        sections.append(_model_card(results, table, summaries, card_data))
    return sections


def _data_notes(results: list[Result]) -> list[str]:
    """What the results were evaluated on, where they record it (cxr.provenance checked that they agree)."""
    for result in results:
        data = result.metrics.get("provenance", {}).get("data")
        if data is not None:
            return [f"Every result was evaluated on {provenance.describe_data(data)}."]
    return []


def _draw(films: pd.DataFrame, rows: list[Contender], candidates: pd.DataFrame, out: Path) -> dict[str, Path]:
    """Every figure of the report into `out`: file name -> path."""
    trained = [c for c in rows if c.runs]
    drawn = {}
    for contender in trained:
        name = files.loss_acc_graph(contender.backbone, contender.regime, contender.head)
        plots.loss_acc(contender.runs, contender.name, out / name)
        drawn[name] = out / name
    plots.accuracy_vs_time(rows, out / files.COMPARISON_PLOT)
    plots.roc(films, rows, out / files.ROC_PLOT)
    plots.reliability(films, rows, out / files.CALIBRATION_PLOT)
    plots.confusion(films, rows, out / files.CONFUSION_PLOT)
    plots.tuning(candidates, out / files.TUNING_PLOT)
    return {**drawn, **{name: out / name for name in FIGURES}}


def _candidate_cells(candidates: pd.DataFrame) -> pd.DataFrame:
    """tuning.csv as the report shows it, every cell text."""
    cells = board.cells(candidates)
    cells["chosen"] = candidates["chosen"].map({True: "chosen", False: ""})
    return cells


def _write(results: list[Result], missing: list[Failure], notes: list[str], out: Path, samples: int,
           explain_dirs: Sequence[Path] = (), card_data: tuple[dict, pd.DataFrame | None] | None = None,
           ) -> dict[str, Path]:
    written = {name: out / name for name in (files.LEADERBOARD_CSV, files.LEADERBOARD_MD, files.REPORT_HTML,
                                             files.TUNING_CSV)}
    table, figures = pd.DataFrame(columns=board.COLUMNS), []
    candidates = tuning.candidates(results)
    candidates.to_csv(written[files.TUNING_CSV], index=False)
    ranked = tuning.chosen_results(results, candidates)
    if results:
        films, rows = collect.contenders(ranked, samples, tuning.budgets(candidates))
        table = board.leaderboard(films, rows, samples)
        written.update(_draw(films, rows, candidates, out))
        figures = [written[name] for name in FIGURES]
        figures += [written[files.loss_acc_graph(row["backbone"], row["regime"], row["head"])]
                    for _, row in table.iterrows() if not board.is_ensemble(row)]
        ensemble = [c for c in rows if not c.runs]
        if ensemble:
            written[files.ENSEMBLE_METRICS] = out / files.ENSEMBLE_METRICS
            record = {"members": [provenance.model_record(r.folder) for r in ranked],
                      "data": next((d for r in results if (d := r.metrics.get("provenance", {}).get("data"))), None)}
            written[files.ENSEMBLE_METRICS].write_text(json.dumps({**ensemble[0].metrics, "provenance": record},
                                                                  indent=2, allow_nan=False))
    table.to_csv(written[files.LEADERBOARD_CSV], index=False)
    budget = tuning.budget_note(candidates)
    text = dict(summary=board.comparison_summary(table), missing=[failure.line() for failure in missing],
                notes=[*notes, *_data_notes(results)], budget=budget,
                compact=board.compact(table), full=board.cells(table), footnote=board.has_frozen(table),
                mark=board.FEATURES_MARK, tuning=_candidate_cells(candidates))
    written[files.LEADERBOARD_MD].write_text(render.leaderboard_markdown(**text))
    explain_dirs = _ranked_explanations(explain_dirs, ranked)
    sections = _sections(ranked, table, explain_dirs, card_data, out) if results else []
    if (out / files.GRADCAM_COMPARISON).is_file():
        written[files.GRADCAM_COMPARISON] = out / files.GRADCAM_COMPARISON
    written[files.REPORT_HTML].write_text(render.report_html(
        **text, figures=figures, sections=sections, seed_accuracy=SEED_TEST_ACCURACY, ensemble=ENSEMBLE,
        significance=settings.SIGNIFICANCE, bins=settings.CALIBRATION_BINS))
    return written
