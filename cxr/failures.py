"""A backbone that failed for good, written where its result would be, so the comparison goes on without it.

The train and evaluate steps of a pipeline write `failure.json` instead of raising when one backbone cannot be
trained or evaluated (after its retries); the aggregate step reports the others and names the missing one, and
the run still ends as failed. cxr.artifacts.read_failure reads the record back, checked.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from cxr import files, settings

STAGES = ("train", "evaluate")


@dataclass(frozen=True)
class Failure:
    backbone: str
    seed: int
    stage: str  # "train" or "evaluate"
    reason: str  # one line: the error, or how the process died
    regime: str = settings.DEFAULT_REGIME  # settings.REGIMES; records that predate regimes were fine-tuned
    head: str = settings.DEFAULT_HEAD  # settings.HEADS; records that predate the probes had the seed's head
    learning_rate: float | None = None  # None in records that predate the learning-rate search

    def line(self) -> str:
        # The seed's regime and head go unnamed, as they always did; others are named as the report's rows are. The
        # learning rate tells apart the candidates of one row.
        regime = "" if self.regime == settings.DEFAULT_REGIME else f" · {self.regime}"
        head = "" if self.head == settings.DEFAULT_HEAD else f" · {self.head}"
        rate = "" if self.learning_rate is None else f"learning rate {self.learning_rate:g}, "
        return f"{self.backbone}{regime}{head} ({rate}seed {self.seed}) failed in {self.stage}: {self.reason}"


def write_failure(folder: Path, failure: Failure) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / files.FAILURE).write_text(json.dumps(asdict(failure), indent=2))


def run_verdict(failures: list[Failure], total: int) -> str:
    """'' when every run finished, else one line naming what is missing (the pipeline's final step raises it)."""
    if not failures:
        return ""
    return (f"{len(failures)} of {total} trainings failed, the report covers the others: "
            + "; ".join(f.line() for f in failures))
