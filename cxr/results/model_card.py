"""The model card section of report.html (Mitchell et al. 2019, "Model Cards for Model Reporting"): what the
model was trained and tested on, what it is for and not for, how well it does with intervals, the threshold it
decides at, and what is known to limit it.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import pandas as pd

from cxr import settings

_METRICS = ("accuracy", "sensitivity", "specificity", "precision", "f1")


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _with_interval(entry: Mapping) -> str:
    low, high = entry.get("ci95") or (None, None)
    interval = "" if low is None or high is None else f" ({low:.3f}&ndash;{high:.3f})"
    return _number(entry.get("value")) + interval


def _splits_table(stats: Mapping, manifest: pd.DataFrame | None, test_patients: int | None) -> str:
    rows = []
    for split in settings.SPLITS:
        counts = stats["counts"][split]
        if manifest is not None:
            patients = str(manifest.loc[manifest["split"] == split, "patient_id"].nunique())
        else:
            patients = str(test_patients) if split == "test" and test_patients is not None else "n/a"
        cells = [split, *(str(counts[c]) for c in settings.CLASS_NAMES), str(sum(counts.values())), patients]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    header = "".join(f"<th>{c}</th>" for c in ("split", *settings.CLASS_NAMES, "films", "patients"))
    return f"<table><tr>{header}</tr>{''.join(rows)}</table>"


def _explanations_text(explanations: Sequence[Mapping]) -> str:
    if not explanations:
        return ("No Grad-CAM panels were made for this report: nothing here shows whether the model looks at the "
                "lungs or at markers and borders.")
    games = [e for e in explanations if e.get("pointing_game")]
    parts = [f"Grad-CAM panels were made for {', '.join(html.escape(e['backbone']) for e in explanations)} "
             "(below). A heatmap shows where evidence for pneumonia lies on the grid of the last convolutional "
             "block, which is coarse (input / 32), so it locates a lung field, not a lesion."]
    if games:
        scores = "; ".join(f"{html.escape(e['backbone'])} {e['pointing_game']['hit_rate']:.2f} against "
                           f"{e['pointing_game']['random_rate']:.2f} for a random point "
                           f"({e['pointing_game']['films']} films)" for e in games)
        parts.append(f"On films with known lesion boxes, the heatmap's maximum fell inside a box at these rates: "
                     f"{scores}. A rate near the random one means the model decides from something else.")
    else:
        parts.append("No lesion boxes exist for this data, so whether the heatmaps point at the disease was not "
                     "measured: read the panels for attention on text markers, borders or outside the lungs.")
    return " ".join(parts)


def model_card_html(stats: Mapping, leaderboard: Sequence[Mapping], metrics: Mapping[str, Mapping],
                    explanations: Sequence[Mapping] = (), *, chosen: str | None = None, synthetic: bool = False,
                    manifest: pd.DataFrame | None = None) -> str:
    """The model card as an HTML section.

    stats: the data's stats.json; leaderboard: the report's rows (dicts with at least `backbone` and
    `roc_auc`); metrics: backbone -> its metrics.json (intervals and thresholds); explanations: the explain.json
    summaries made; chosen: the backbone the card is for (default the leaderboard's first); synthetic: the data
    came from `cxr synth`; manifest: the data's manifest.csv, for patients per split (else only test patients).
    """
    if not leaderboard:
        raise ValueError("model_card_html needs at least one leaderboard row")
    chosen = chosen or leaderboard[0]["backbone"]
    card = metrics[chosen]
    threshold = card["thresholds"]["validation"]
    rows = []
    for name, label in (("default", f"{card['thresholds']['default']:.2f} (default)"),
                        ("validation", f"{threshold:.3f} (chosen on validation)")):
        at = card[f"at_{name}_threshold"]
        rows.append(f"<tr><td>{label}</td>" + "".join(f"<td>{_with_interval(at[m])}</td>" for m in _METRICS)
                    + "</tr>")
    others = "".join(f"<tr><td>{html.escape(row['backbone'])}</td>"
                     f"<td>{_with_interval(metrics[row['backbone']]['roc_auc'])}</td></tr>"
                     for row in leaderboard if row["backbone"] in metrics)
    data_line = ("synthetic films from <code>cxr synth</code>: drawn shapes, not radiographs. Every number here "
                 "says only that the pipeline works; none says anything about patients."
                 if synthetic else
                 "the Kaggle <i>Chest X-Ray Images (Pneumonia)</i> set (Kermany et al. 2018): frontal films of "
                 "children aged one to five from one hospital (Guangzhou Women and Children's Medical Center).")
    skipped = len(stats.get("skipped", []))
    split_mode = stats.get("settings", {}).get("split", settings.SPLIT_MODE)
    return f"""<h2>Model card: {html.escape(chosen)}</h2>
<h3>Model</h3>
<p>{html.escape(chosen)} (keras.applications) &rarr; Flatten &rarr; Dense &rarr; Dropout &rarr; Dense(1, sigmoid):
P(pneumonia) from one frontal chest film, grayscale, stretched to a square of
{stats.get('settings', {}).get('image_size', 'n/a')} px and then to the backbone's input. Decision: PNEUMONIA when
P &ge; {threshold:.3f}, the threshold maximising sensitivity + specificity on the validation split (never on test).</p>
<h3>Data and splits</h3>
<p>Data: {data_line} Split: {html.escape(split_mode)} (by patient: no patient's films on both sides). {skipped}
unreadable file(s) skipped.</p>
{_splits_table(stats, manifest, card.get('test_patients'))}
<h3>Intended use</h3>
<p>A benchmark of backbones and a reproducible pipeline, for research and teaching: comparing architectures under
a patient-level split, and studying where they look.</p>
<h3>Not for</h3>
<ul><li>Diagnosing, triaging or screening patients, or any clinical decision: the model is not a medical device
and has not been validated prospectively or at another site.</li>
<li>Adults, lateral views, CT, or films from other hospitals and machines without new validation: the training
films are children's frontal films from one site.</li>
<li>Telling bacterial from viral pneumonia, or pneumonia from other findings (COVID-19, tuberculosis,
effusion): it was trained on two classes only.</li></ul>
<h3>Test results ({card['test_images']} films, {card.get('test_patients', 'n/a')} patients)</h3>
<p>Intervals: 95 % bootstrap over test patients. ROC AUC {_with_interval(card['roc_auc'])}.</p>
<table><tr><th>threshold</th>{''.join(f'<th>{m}</th>' for m in _METRICS)}</tr>{''.join(rows)}</table>
<p>Every backbone compared (test ROC AUC):</p>
<table><tr><th>backbone</th><th>ROC AUC (95 % interval)</th></tr>{others}</table>
<h3>Known limits</h3>
<ul><li>{"Synthetic data: the opacities are drawn blobs; real pneumonia is subtler and varied."
         if synthetic else "Single site, one population (children 1-5 years): performance elsewhere is unknown "
         "and likely lower (Zech et al. 2018 found CNNs for pneumonia lose accuracy across hospitals)."}</li>
<li>Label noise: the labels are two physicians' reading of the film alone (a third checked the test split),
without clinical confirmation: some are wrong, which caps any measured score.</li>
<li>Class balance: about 3:1 pneumonia in training and 62.5 % in the official test split; precision and accuracy
at another prevalence will differ.</li>
<li>Where the model looks: {_explanations_text(explanations)}</li></ul>
"""
