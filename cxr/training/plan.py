"""What to train and where, without TensorFlow: the pipeline's plan step and the train task's supervising parent
import only this, so they start in a second and leave the memory to the training child."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
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


# Where an option appears besides the CLI: "pipeline" options are pipeline parameters passed to every train task;
# "per_run" ones differ between the pipeline's trainings (the plan step lists them); "cli" ones exist on the
# command line alone (the pipeline's GPU tasks keep the automatic choice).
PIPELINE, PER_RUN, CLI_ONLY = "pipeline", "per_run", "cli"


def option(default, help: str, *, flag: str | None = None, scope: str = PIPELINE):
    """A training option, declared once: the dataclass field carries its default (MISSING: required), its help,
    its command-line flag (default `--name-with-dashes`) and where it appears. The CLI is derived from it; the train
    component's and the pipeline's parameters are checked against it (tests/test_options.py), since KFP reads their
    signatures from source."""
    return field(default=default, metadata={"help": help, "flag": flag, "scope": scope})


def flag(name: str) -> str:
    """The command-line flag of the option `name`, which error messages name too."""
    declared = {f.name: f for f in fields(TrainSettings)}[name].metadata["flag"]
    return declared or "--" + name.replace("_", "-")


@dataclass(frozen=True)
class TrainSettings:
    """Every option of one training. A new option is one field here plus the code that uses it."""

    backbone: str = option(MISSING, f"one of {', '.join(settings.ALL_BACKBONES)}, in any letter case", scope=PER_RUN)
    epochs: int = option(settings.EPOCHS, "epochs at most (early stopping may end sooner)")
    batch_size: int = option(settings.BATCH_SIZE, "films per training step")
    learning_rate: float = option(settings.LEARNING_RATE, "Adam's learning rate", flag="--lr", scope=PER_RUN)
    dense_units: int = option(settings.DENSE_UNITS, "units of the head's hidden Dense layer")
    dropout: float = option(settings.DROPOUT, "dropout before the output layer")
    image_size: int = option(settings.IMAGE_SIZE, "input size in pixels; 0 = the backbone's native size")
    weights: str = option(settings.WEIGHTS,
                          "imagenet, none, a weights file, or a folder or gs:// prefix of the ImageNet files")
    regime: str = option(settings.DEFAULT_REGIME, "finetune: the whole network; frozen: the backbone fixed, the head "
                         "trained on its cached features", scope=PER_RUN)
    patience: int = option(settings.PATIENCE, "early-stopping epochs without a better validation loss")
    seed: int = option(settings.SEED, "the training seed (initialisation, shuffling, dropout)", scope=PER_RUN)
    mixed_precision: bool | None = option(None, "mixed precision (auto: on with a GPU)", scope=CLI_ONLY)
    xla: bool | None = option(None, "XLA compilation (auto: on with a GPU)", scope=CLI_ONLY)

    @classmethod
    def options(cls, scope: str | None = None) -> list[Field]:
        """The declared options, in declaration order; only those of `scope` when given."""
        return [f for f in fields(cls) if scope is None or f.metadata["scope"] == scope]

    @classmethod
    def from_values(cls, values: Mapping) -> TrainSettings:
        """The settings named in `values` (a parsed command line's vars(), a component's parameters), ignoring
        every other key; an option not in `values` keeps its default."""
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})

    def validate(self) -> None:
        """Refuse settings that cannot train, before any work (one line naming the option)."""
        for name in ("epochs", "batch_size", "dense_units", "patience"):
            if getattr(self, name) < 1:
                raise UserError(f"{flag(name)} must be at least 1, got {getattr(self, name)}")
        if self.batch_size > settings.MAX_BATCH_SIZE:
            raise UserError(f"{flag('batch_size')} must be at most {settings.MAX_BATCH_SIZE}, got {self.batch_size}")
        if not 0 < self.learning_rate < math.inf:
            raise UserError(f"{flag('learning_rate')} must be a positive number, got {self.learning_rate}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"{flag('dropout')} must be in [0, 1), got {self.dropout}")
        if self.regime not in settings.REGIMES:
            raise UserError(f"{flag('regime')} must be one of {', '.join(settings.REGIMES)}, got {self.regime!r}")
        if not 0 <= self.image_size <= settings.MAX_IMAGE_SIZE:
            raise UserError(f"{flag('image_size')} must be 0 (native) or a size in pixels up to "
                            f"{settings.MAX_IMAGE_SIZE}, got {self.image_size}")
        check_weights(self.weights)


# The per-run options that name a leaderboard row: every one but the learning rate, which a row searches (its
# candidates, chosen on validation), and the seed, which repeats a candidate. A new axis of the study declared here
# as a per-run option becomes part of the row key of the report and the provenance checks.
ROW = tuple(option.name for option in TrainSettings.options(PER_RUN) if option.name not in ("learning_rate", "seed"))


def row_key(run) -> tuple:
    """The leaderboard row a training or result (anything with the ROW attributes) belongs to."""
    return tuple(getattr(run, name) for name in ROW)


def row_name(key: tuple) -> str:
    """A row as the report names it: `ResNet50 · frozen`."""
    return " · ".join(str(value) for value in key)


def check_weights(weights: str) -> None:
    """Refuse, before any work, a --weights that names no usable file: a missing path, or a whole saved model
    (.keras), whose layers are not a backbone's and would be refused only after Keras printed every mismatch."""
    if weights.lower() in ("imagenet", "none") or weights.startswith("gs://"):
        return
    path = Path(weights)
    if path.suffix == ".keras":
        raise UserError(f"--weights {weights}: a whole saved model (.keras), not a backbone's weights; pass a "
                        "backbone .weights.h5 file, imagenet or none")
    if not path.exists():
        raise UserError(f"--weights {weights}: no such file; expected imagenet, none, a backbone weights file or "
                        "a folder of them")


def check_learning_rates(rates: list) -> list[float]:
    """The learning rates of a search as floats, refused in one line when the list is empty or a rate is repeated,
    not a number, not positive or not finite: a typo costs seconds, not an ingest."""
    if not rates:
        raise UserError("learning_rates: the list is empty")
    for rate in rates:
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate < math.inf:
            raise UserError(f"learning_rates: {rate!r} is not a positive finite number")
        if rates.count(rate) > 1:
            raise UserError(f"learning_rates: {rate:g} is listed more than once in {list(rates)}")
    return [float(rate) for rate in rates]


def plan_runs(names: list[str], seeds: list[int], regimes: list[str] = settings.PIPELINE_REGIMES,
              learning_rates: list[float] = settings.LEARNING_RATES) -> list[dict]:
    """One training per backbone, regime, learning rate and seed, {"backbone": canonical name, "regime": str,
    "learning_rate": float, "seed": int}: every backbone and regime gets the same learning rates and seeds, an
    equal tuning budget by construction. Checked before any work: an unknown name or regime, a backbone listed
    twice (in any letter case: both would share one checkpoint), a repeated regime or seed, a bad learning rate
    (check_learning_rates) is refused with one line."""
    if not names:
        raise UserError("backbones: the list is empty")
    if not seeds:
        raise UserError("seeds: the list is empty")
    if not regimes:
        raise UserError("regimes: the list is empty")
    for regime in regimes:
        if regime not in settings.REGIMES:
            raise UserError(f"regimes: unknown regime {regime!r}; valid: {', '.join(settings.REGIMES)}")
        if regimes.count(regime) > 1:
            raise UserError(f"regimes: {regime} is listed more than once in {list(regimes)}")
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
    rates = check_learning_rates(learning_rates)
    return [{"backbone": name, "regime": regime, "learning_rate": rate, "seed": seed}
            for name in canonical for regime in regimes for rate in rates for seed in seeds]


def pipeline_checkpoint(root: str, run_id: str, backbone: str, regime: str, learning_rate: float, seed: int) -> Path:
    """Where a pipeline's train task keeps its checkpoint: per run, backbone, regime, learning rate and seed under
    `root` (a volume that outlives the pod, so a retried task finds it), or in a fresh temporary folder when `root`
    is empty, which keeps checkpoints out of the uploaded model artifact."""
    base = Path(root) if root else Path(tempfile.mkdtemp(prefix="checkpoint-"))
    return base / run_id / f"{canonical_backbone(backbone).lower()}-{regime}-lr{learning_rate:g}-seed{seed}"


def pipeline_features(root: str) -> Path | None:
    """Where a pipeline's frozen trainings keep their feature caches: at the top of the checkpoint volume, shared by
    every seed, retry and later run on the same data (a cache is keyed by backbone, size, weights and dataset);
    None without a volume: then beside the task's temporary checkpoint folder."""
    return Path(root) / settings.FEATURES_DIR if root else None


def dashboard_scalars(metrics: dict) -> dict[str, float]:
    """The training scalars a dashboard shows (the KFP UI's metrics table): best-epoch loss and accuracy,
    epochs, learning time, throughput."""
    scalars = {name: round(value, 4) for name, value in metrics["best"].items()}
    for name in ("epochs_run", "best_epoch", "learning_time_seconds", "images_per_second"):
        scalars[name] = round(float(metrics[name]), 2)
    return scalars
