"""The report's text: report.html, its sections (where each backbone looks, the model card), the KFP UI's
standalone pages and leaderboard.md, rendered from the Jinja2 templates in cxr/results/templates/.

HTML templates escape every value (autoescape): a backbone name, a failure's reason or a file name cannot inject
markup. Markdown tables come from pandas' `to_markdown` (tabulate). Figures are embedded as data: URIs, so a page
stands alone (the KFP UI shows one file, offline).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import jinja2
import pandas as pd
from markupsafe import Markup

# Templates whose names end in .html.j2 are escaped; leaderboard.md.j2 is Markdown, whose tables pandas writes.
_HTML = ("html.j2",)


@dataclass(frozen=True)
class Figure:
    """A PNG to embed: its alternative text and its bytes in base64."""
    alt: str
    data: str


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("cxr.results", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=_HTML, default=False),
        undefined=jinja2.StrictUndefined,  # a misspelt name in a template is an error, not an empty cell
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def _render(template: str, **context) -> str:
    return _environment().get_template(template).render(**context)


def embedded(path: Path) -> Figure:
    """A PNG file as a Figure named after the file."""
    path = Path(path)
    return Figure(path.stem, base64.b64encode(path.read_bytes()).decode())


def report_html(*, summary: str, missing: Sequence[str], notes: Sequence[str], budget: str | None,
                compact: pd.DataFrame, full: pd.DataFrame, tuning: pd.DataFrame, footnote: bool, mark: str,
                figures: Sequence[Path], sections: Sequence[str], seed_accuracy: Mapping[str, float], ensemble: str,
                significance: float, bins: int) -> str:
    """The whole report.html. compact and full: the leaderboard's tables, tuning: the learning-rate candidates,
    every cell already text; notes: lines on what the results are (their data, a failure record beside a result);
    budget: the sentence on the search's budget; sections: HTML rendered by this module (where each backbone
    looks, the model card)."""
    return _render("report.html.j2", summary=summary, missing=list(missing), notes=list(notes), budget=budget,
                   compact=compact, full=full, tuning=tuning,
                   footnote=footnote, mark=mark, figures=[embedded(p) for p in figures],
                   sections=[Markup(s) for s in sections], seed_accuracy=seed_accuracy, ensemble=ensemble,
                   significance=significance, bins=bins)


def leaderboard_markdown(*, summary: str, missing: Sequence[str], notes: Sequence[str], budget: str | None,
                         compact: pd.DataFrame, full: pd.DataFrame, tuning: pd.DataFrame, footnote: bool,
                         mark: str) -> str:
    """leaderboard.md: the compact table, what it says, the notes, the learning-rate candidates and every column
    below it."""
    def markdown(table: pd.DataFrame) -> str:
        return table.to_markdown(index=False, tablefmt="pipe", disable_numparse=True) if not table.empty else ""

    return _render("leaderboard.md.j2", summary=summary, missing=list(missing), notes=list(notes), budget=budget,
                   compact=markdown(compact), full=markdown(full), tuning=markdown(tuning), footnote=footnote,
                   mark=mark)


def explanations_section(summaries: Sequence[Mapping], comparison: Path | None, panels: Sequence[Path]) -> str:
    """Where each backbone looks: the pointing game per backbone (explain.json), the shared films side by side
    and each backbone's panel."""
    return _render("explanations.html.j2", summaries=list(summaries),
                   comparison=embedded(comparison) if comparison else None, panels=[embedded(p) for p in panels])


def model_card_section(**facts) -> str:
    """The model card (cxr.results.model_card gathers its facts)."""
    return _render("model_card.html.j2", **facts)


def page(section: str) -> str:
    """A section rendered by this module as a page of its own, for the KFP UI's HTML viewer."""
    return _render("page.html.j2", section=Markup(section))


def message_page(message: str) -> str:
    """A page holding one sentence, escaped."""
    return _render("page.html.j2", message=message)
