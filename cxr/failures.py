"""A backbone that failed for good, written where its result would be, so the comparison goes on without it.

The train and evaluate steps of a pipeline write `failure.json` instead of raising when one backbone cannot be
trained or evaluated (after its retries); the aggregate step reports the others and names the missing one, and
the run still ends as failed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from cxr import files
from cxr.errors import UserError

STAGES = ("train", "evaluate")


@dataclass(frozen=True)
class Failure:
    backbone: str
    seed: int
    stage: str  # "train" or "evaluate"
    reason: str  # one line: the error, or how the process died

    def line(self) -> str:
        return f"{self.backbone} (seed {self.seed}) failed in {self.stage}: {self.reason}"


def write_failure(folder: Path, failure: Failure) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / files.FAILURE).write_text(json.dumps(asdict(failure), indent=2))


def read_failure(folder: Path) -> Failure | None:
    """The failure recorded in `folder`, or None when it holds none; a damaged record is one line naming it."""
    path = Path(folder) / files.FAILURE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        failure = Failure(str(record["backbone"]), int(record["seed"]), str(record["stage"]), str(record["reason"]))
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path} is not a failure record ({error}): it needs backbone, seed, stage, reason") from None
    if failure.stage not in STAGES:
        raise UserError(f"{path}: stage must be one of {', '.join(STAGES)}, not {failure.stage!r}")
    return failure


def run_verdict(failures: list[Failure], total: int) -> str:
    """'' when every run finished, else one line naming what is missing (the pipeline's final step raises it)."""
    if not failures:
        return ""
    return (f"{len(failures)} of {total} trainings failed, the report covers the others: "
            + "; ".join(f.line() for f in failures))
