"""Each leaderboard row's learning rate, chosen on validation alone: the candidates (a row's results grouped by
learning rate, each over its seeds), the choice, and what the search cost each row (docs/results.md, "The learning
rate, chosen on validation").

The choice reads each seed's validation ROC AUC and nothing from the test films: tuning.csv shows the candidates'
test ROC AUC beside it, for the reader, after the choice is made.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from cxr.results.collect import Result, gather, row_label
from cxr.training.plan import ROW, row_key

CANDIDATE = (*ROW, "learning_rate")
COLUMNS = [*CANDIDATE, "seeds", "val_roc_auc", "test_roc_auc", "chosen"]


def _number(value) -> float:
    return float("nan") if value is None else float(value)


def candidates(results: Sequence[Result]) -> pd.DataFrame:
    """One row per candidate (a row of the leaderboard at one learning rate): how many seeds it has, the mean over
    them of each seed's validation ROC AUC and of its test ROC AUC, and whether it is chosen (choose)."""
    if not results:
        return pd.DataFrame(columns=COLUMNS)
    per_seed = pd.DataFrame([{**dict(zip(ROW, row_key(r), strict=True)), "learning_rate": r.learning_rate,
                              "seed": r.seed, "val_roc_auc": _number(r.metrics["validation"]["roc_auc"]),
                              "test_roc_auc": _number(r.metrics["roc_auc"]["value"])} for r in results])
    # skipna=False: a seed whose validation ROC AUC is undefined leaves its candidate's undefined, never chosen.
    table = per_seed.groupby(list(CANDIDATE), sort=True).agg(
        seeds=("seed", "size"), val_roc_auc=("val_roc_auc", lambda v: v.mean(skipna=False)),
        test_roc_auc=("test_roc_auc", lambda v: v.mean(skipna=False))).reset_index()
    table["chosen"] = choose(table.drop(columns="test_roc_auc"))
    return table[COLUMNS]


def choose(table: pd.DataFrame) -> pd.Series:
    """For each row of the leaderboard, the candidate with the highest validation ROC AUC; a tie goes to the
    smaller learning rate (the gentler update, and the seed's side of any grid), and an undefined AUC loses to any
    other. `table` holds the columns of CANDIDATE and val_roc_auc, no test column: True for the chosen rows."""
    ranked = table.sort_values(["val_roc_auc", "learning_rate"], ascending=[False, True], na_position="last",
                               kind="stable")
    chosen = ranked.groupby(list(ROW), sort=False).head(1).index
    return pd.Series(table.index.isin(chosen), index=table.index)


def chosen_results(results: Sequence[Result], table: pd.DataFrame) -> list[Result]:
    """The results of the chosen candidates of `table` (candidates()), in the order of `results`."""
    picked = {tuple(row) for row in table.loc[table["chosen"], list(CANDIDATE)].itertuples(index=False)}
    return [r for r in results if (*row_key(r), r.learning_rate) in picked]


def ranked_folders(result_dirs: Sequence[Path]) -> list[Path]:
    """The result folders among `result_dirs` that the report ranks: every finished training of each row's chosen
    learning rate (what the pipeline may export)."""
    results, _, _ = gather(result_dirs)
    return [r.folder for r in chosen_results(results, candidates(results))]


def budgets(table: pd.DataFrame) -> dict[tuple, int]:
    """How many learning rates each row of the leaderboard chose among, by row_key."""
    return {tuple(key): int(count) for key, count in table.groupby(list(ROW), sort=True).size().items()}


def budget_note(table: pd.DataFrame) -> str | None:
    """One sentence on the search's budget: the same number of candidates for every row, or, plainly, which rows
    had fewer or more (a row given more learning rates had more chances on validation, so the comparison is not
    fair); None without results."""
    counts = budgets(table)
    if not counts:
        return None
    if len(set(counts.values())) == 1:
        (count,) = set(counts.values())
        rates = "learning rate" if count == 1 else "learning rates"
        return (f"Equal tuning budgets: every row's learning rate was chosen on validation among {count} {rates} "
                "(tuning.csv).")
    tried = ", ".join(f"{row_label(key)} {count}" for key, count in counts.items())
    return (f"Unequal tuning budgets, so this comparison is not fair: the rows chose their learning rate among "
            f"different numbers of candidates ({tried}); a row given more candidates had more chances on "
            "validation. Train every row at the same learning rates (tuning.csv lists them).")
