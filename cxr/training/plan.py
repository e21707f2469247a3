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


def spelling(name: str, known: tuple[str, ...]) -> str | None:
    """`name` as `known` spells it, or None. The one rule for every name a user types (backbones, regimes), on the
    command line, in the demo and in the pipeline's plan: blanks around it are dropped and letter case does not
    matter."""
    return next((known_name for known_name in known if known_name.lower() == name.strip().lower()), None)


def canonical_name(name: str, known: tuple[str, ...], what: str) -> str:
    """`name` as `known` spells it; an unknown name is refused in one line that lists the known ones."""
    if (found := spelling(name, known)) is None:
        raise UserError(f"unknown {what} {name.strip()!r}; valid: {', '.join(known)}")
    return found


def canonical_backbone(name: str) -> str:
    """The backbone called `name` as settings.ALL_BACKBONES spells it (the registry in cxr.training.backbones has
    the same names)."""
    return canonical_name(name, tuple(settings.ALL_BACKBONES), "backbone")


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
                          "imagenet (alias pretrained: the backbone's published weights), none, a weights file, or a "
                          "folder or gs:// prefix of the ImageNet files and keras-hub presets")
    regime: str = option(settings.DEFAULT_REGIME, "finetune: the whole network; frozen: the backbone fixed, the head "
                         "trained on its cached features", scope=PER_RUN)
    head: str = option(settings.DEFAULT_HEAD, "seed: the seed's Dense head; linear: a logistic-regression probe on "
                       "the pooled features; knn: cosine k-nearest neighbours on them (frozen only)", scope=PER_RUN)
    patience: int = option(settings.PATIENCE, "early-stopping epochs without a better validation loss")
    seed: int = option(settings.SEED, "the training seed (initialisation, shuffling, dropout)", scope=PER_RUN)
    mixed_precision: bool | None = option(None, "mixed precision (auto: on with a GPU)", scope=CLI_ONLY)
    xla: bool | None = option(None, "XLA compilation (auto: on with a GPU)", scope=CLI_ONLY)

    def __post_init__(self) -> None:
        """A backbone, a regime and a head typed in any case, with blanks around, become their canonical spellings;
        an unknown one is left for validate() (or the backbone registry) to refuse in one line."""
        for name, known in (("backbone", tuple(settings.ALL_BACKBONES)), ("regime", settings.REGIMES),
                            ("head", settings.HEADS)):
            object.__setattr__(self, name, spelling(getattr(self, name), known) or getattr(self, name))

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
        if self.regime not in settings.REGIMES:  # __post_init__ spelled a known one as settings.REGIMES does
            raise UserError(f"{flag('regime')} must be one of {', '.join(settings.REGIMES)}, got {self.regime!r}")
        if self.head not in settings.HEADS:  # as for the regime
            raise UserError(f"{flag('head')} must be one of {', '.join(settings.HEADS)}, got {self.head!r}")
        if self.head in settings.FROZEN_ONLY_HEADS and self.regime != "frozen":
            raise UserError(f"{flag('head')} {self.head} has nothing to train end to end: use it with "
                            f"{flag('regime')} frozen")
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
    """A row as the report names it: `ResNet50 · frozen`, with its head when it is not the seed's
    (`ResNet50 · frozen · linear`)."""
    return " · ".join(str(value) for name, value in zip(ROW, key, strict=True)
                      if not (name == "head" and value == settings.DEFAULT_HEAD))


def check_weights(weights: str) -> None:
    """Refuse, before any work, a --weights that names no usable file: a missing path, or a whole saved model
    (.keras), whose layers are not a backbone's and would be refused only after Keras printed every mismatch."""
    if weights.lower() in (*settings.PRETRAINED, "none") or weights.startswith("gs://"):
        return
    path = Path(weights)
    if path.suffix == ".keras":
        raise UserError(f"--weights {weights}: a whole saved model (.keras), not a backbone's weights; pass a "
                        "backbone .weights.h5 file, imagenet or none")
    if not path.exists():
        raise UserError(f"--weights {weights}: no such file; expected imagenet, none, a backbone weights file or "
                        "a folder of them")


def _canonical_list(name: str, values: list, valid: tuple[str, ...]) -> list[str]:
    """`values` as `valid` spells them (in any letter case, blanks dropped); an empty list, an unknown value or one
    listed twice is refused in one line (`name`: the pipeline parameter)."""
    if not values:
        raise UserError(f"{name}: the list is empty")
    try:
        canonical = [canonical_name(str(value), valid, name[:-1]) for value in values]
    except UserError as error:
        raise UserError(f"{name}: {error}") from None
    for value in canonical:
        if canonical.count(value) > 1:
            raise UserError(f"{name}: {value} is listed more than once in {list(values)}")
    return canonical


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


def fitted_without_learning_rate(regime: str, head: str) -> bool:
    """Whether scikit-learn fits the head (a probe on the frozen regime's features), which chooses its own setting
    on validation: such a training has no learning rate to search."""
    return regime == "frozen" and head != settings.DEFAULT_HEAD


def plan_runs(names: list[str], seeds: list[int], regimes: list[str] = settings.PIPELINE_REGIMES,
              heads: list[str] = settings.PIPELINE_HEADS,
              learning_rates: list[float] = settings.LEARNING_RATES) -> list[dict]:
    """One training per backbone, regime, head, learning rate and seed, {"backbone": canonical name, "regime": str,
    "head": str, "learning_rate": float, "seed": int}, the fine-tuning ones first, then the backbones in the order
    listed (the order trainings start in when there are fewer parallel slots than trainings). Every backbone, regime
    and head gets the same learning rates and seeds, an equal tuning budget by construction. A probe fitted by
    scikit-learn (fitted_without_learning_rate) has no rate to search: it is planned once per seed, at the list's
    first rate, which it does not use. A frozen-only head (knn) is planned in the frozen regime alone; a plan left
    empty by that is refused. Checked before any work: an unknown name, regime or head, a backbone listed twice (in
    any letter case: both would share one checkpoint), a repeated regime, head or seed, a bad learning rate
    (check_learning_rates) is refused with one line."""
    if not names:
        raise UserError("backbones: the list is empty")
    if not seeds:
        raise UserError("seeds: the list is empty")
    regimes = _canonical_list("regimes", regimes, settings.REGIMES)
    heads = _canonical_list("heads", heads, settings.HEADS)
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
    # Fine-tuning first: with fewer parallel slots than trainings (kfp.local runs two, a cluster PARALLELISM), the
    # long trainings start first and the frozen ones, a pass of the backbone and seconds of head training, fill in.
    pairs = [(regime, head) for regime in sorted(regimes, key=lambda regime: regime != "finetune") for head in heads
             if regime == "frozen" or head not in settings.FROZEN_ONLY_HEADS]
    if not pairs:
        raise UserError(f"heads: {', '.join(heads)} train only in the frozen regime; add frozen to regimes")
    rates = check_learning_rates(learning_rates)
    return [{"backbone": name, "regime": regime, "head": head, "learning_rate": rate, "seed": seed}
            for regime, head in pairs for name in canonical
            for rate in (rates[:1] if fitted_without_learning_rate(regime, head) else rates) for seed in seeds]


def pipeline_checkpoint(root: str, run_id: str, backbone: str, regime: str, learning_rate: float, seed: int,
                        head: str = settings.DEFAULT_HEAD) -> Path:
    """Where a pipeline's train task keeps its checkpoint: per run, backbone, regime, head, learning rate and seed
    under `root` (a volume that outlives the pod, so a retried task finds it), or in a fresh temporary folder when
    `root` is empty, which keeps checkpoints out of the uploaded model artifact."""
    base = Path(root) if root else Path(tempfile.mkdtemp(prefix="checkpoint-"))
    variant = regime if head == settings.DEFAULT_HEAD else f"{regime}-{head}"  # the seed's head: names as before
    return base / run_id / f"{canonical_backbone(backbone).lower()}-{variant}-lr{learning_rate:g}-seed{seed}"


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
