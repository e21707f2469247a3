"""What to train and where, without TensorFlow: the pipeline's plan step and the train task's supervising parent
import only this, so they start in a second and leave the memory to the training child."""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cxr import settings
from cxr.errors import UserError


def canonical_backbone(name: str) -> str:
    """The backbone called `name`, in any letter case, as settings.ALL_BACKBONES spells it (the registry in
    cxr.training.backbones has the same names)."""
    for known in settings.ALL_BACKBONES:
        if known.lower() == name.lower():
            return known
    raise UserError(f"unknown backbone {name!r}; valid: {', '.join(settings.ALL_BACKBONES)}")


@dataclass(frozen=True)
class TrainSettings:
    backbone: str
    epochs: int = settings.EPOCHS
    batch_size: int = settings.BATCH_SIZE
    learning_rate: float = settings.LEARNING_RATE
    dense_units: int = settings.DENSE_UNITS
    dropout: float = settings.DROPOUT
    image_size: int = settings.IMAGE_SIZE  # 0 = the backbone's native size
    weights: str = settings.WEIGHTS
    regime: str = settings.REGIME  # settings.REGIMES
    patience: int = settings.PATIENCE
    seed: int = settings.SEED
    mixed_precision: bool | None = None  # None: on when a GPU is present
    xla: bool | None = None  # None: on when a GPU is present

    def validate(self) -> None:
        """Refuse settings that cannot train, before any work (one line naming the option)."""
        for name in ("epochs", "batch_size", "dense_units", "patience"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.batch_size > settings.MAX_BATCH_SIZE:
            raise UserError(f"--batch-size must be at most {settings.MAX_BATCH_SIZE}, got {self.batch_size}")
        if not 0 < self.learning_rate < math.inf:
            raise UserError(f"--lr must be a positive number, got {self.learning_rate}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.regime not in settings.REGIMES:
            raise UserError(f"--regime must be one of {', '.join(settings.REGIMES)}, got {self.regime!r}")


def plan_runs(names: list[str], seeds: list[int]) -> list[dict]:
    """One training per backbone and seed, {"backbone": canonical name, "seed": int}, checked before any work:
    an unknown name, a backbone listed twice (in any letter case: both would share one checkpoint) or a repeated
    seed is refused with one line."""
    if not names:
        raise UserError("backbones: the list is empty")
    if not seeds:
        raise UserError("seeds: the list is empty")
    canonical = [canonical_backbone(str(name)) for name in names]
    for name in canonical:
        if canonical.count(name) > 1:
            spellings = ", ".join(str(n) for n in names if canonical_backbone(str(n)) == name)
            raise UserError(f"backbones: {name} is listed more than once ({spellings})")
    # KFP hands list parameters over as JSON numbers, so 42 may arrive as 42.0.
    if any(isinstance(seed, bool) or not isinstance(seed, int | float) or seed != int(seed) for seed in seeds):
        raise UserError(f"seeds: expected whole numbers, got {seeds}")
    seeds = [int(seed) for seed in seeds]
    if len(set(seeds)) != len(seeds):
        raise UserError(f"seeds: a seed is repeated in {seeds}")
    return [{"backbone": name, "seed": seed} for name in canonical for seed in seeds]


def pipeline_checkpoint(root: str, run_id: str, backbone: str, seed: int) -> Path:
    """Where a pipeline's train task keeps its checkpoint: per run, backbone and seed under `root` (a volume that
    outlives the pod, so a retried task finds it), or in a fresh temporary folder when `root` is empty, which
    keeps checkpoints out of the uploaded model artifact."""
    base = Path(root) if root else Path(tempfile.mkdtemp(prefix="checkpoint-"))
    return base / run_id / f"{canonical_backbone(backbone).lower()}-seed{seed}"


def headline_metrics(metrics: dict) -> dict[str, float]:
    """The training scalars a dashboard shows (the KFP UI's metrics table): best-epoch loss and accuracy,
    epochs, learning time, throughput."""
    scalars = {name: round(value, 4) for name, value in metrics["best"].items()}
    for name in ("epochs_run", "best_epoch", "learning_time_seconds", "images_per_second"):
        scalars[name] = round(float(metrics[name]), 2)
    return scalars
