"""`make demo`: the whole pipeline through KFP's local runner, on synthetic data, sized for a laptop CPU.

    python -m pipelines.local_demo [--out runs/demo] [--backbones MobileNet,ResNet50] [--regimes frozen]
                                   [--learning-rates 1e-3,1e-4] ...

Three backbones in both regimes by default: each fine-tuned end to end and frozen (its features computed once,
the head trained on them), side by side in the report; `--backbones` takes any of the registry's names.
`--learning-rates` trains every backbone and regime at each rate and lets the report choose each row's on
validation (tuning.csv).

Every task runs as a subprocess of this Python (kfp.local.SubprocessRunner), so nothing needs Docker or a
cluster; GPU requests, node selectors and volumes are ignored locally (with a warning from kfp).
"""

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
from kfp import local

from cxr import settings
from cxr.data.synth import plan_splits, synthesize
from cxr.errors import UserError
from cxr.outputs import make_folder
from cxr.training.plan import TrainSettings, plan_runs
from pipelines.chest_xray_benchmark import chest_xray_benchmark

# CPU-sized settings, measured on a 2-core machine (README, "make demo"): small films, from-scratch weights
# (no ImageNet download), a learning rate for training from scratch, few epochs. At 32 px the cheap backbones
# cost little; InceptionV3 and Xception are raised to their minimum inputs, 75 and 71 px, and dominate the time.
DEMO = {
    # Three of the seed's five, each in both regimes: on the shared 2-core machine the five x two took 1,675 s
    # (995 CPU-seconds) and MobileNet, InceptionV3 and ResNet50 x two 1,378 s (709 CPU-seconds), far over the
    # demo's 6 minutes; fine-tuning InceptionV3 and ResNet50 took 355 s each there, VGG16 105 s. InceptionV3 is the
    # one that learns these films from scratch at this size (test ROC AUC 1.000 in both runs); MobileNet and VGG16
    # are the cheapest, and VGG16 shows the regimes apart (frozen ROC AUC 0.885, fine-tuned 0.842 in the first run).
    "backbones": ("MobileNet", "InceptionV3", "VGG16"),
    "per_class": 80,
    "film_size": (256, 512),
    "processed_image_size": 80,
    "image_size": 32,
    "epochs": 4,
    "batch_size": 16,  # twice the optimizer and BatchNorm steps per epoch of 32, for little more CPU time
    "learning_rates": (1e-3,),
    "weights": "none",
    # Both regimes, side by side. From scratch (weights none) a frozen backbone is a random one: its row shows the
    # regime's wiring and cost (one pass of the backbone, then seconds of head training), not what ImageNet
    # features are worth.
    "regimes": ("finetune", "frozen"),
    "val_fraction": 0.15,
    "device": "auto",  # a laptop's GPU when it has one; the cluster's default, gpu, would refuse a CPU
}


def learning_rates(text: str) -> list[float]:
    """--learning-rates as numbers: a comma-separated list, each refused in one line when it is not a number
    (plan_runs refuses the rest: an empty list, a repeat, a rate that is not positive and finite)."""
    rates = []
    for word in (word.strip() for word in text.split(",")):
        if not word:
            continue
        try:
            rates.append(float(word))
        except ValueError:
            raise UserError(f"--learning-rates: {word!r} is not a number") from None
    return rates


def check(args: argparse.Namespace) -> Path:
    """Every setting checked before the first step (synth takes seconds, the pipeline minutes): the output folder,
    the backbones, regimes and learning rates, the film count and the sizes, each refused in one line. Returns the
    output folder."""
    out = args.out.resolve()
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"{out} is not empty; remove it or pass --out NEW_FOLDER")
    runs = plan_runs([name.strip() for name in args.backbones.split(",") if name.strip()], settings.SEEDS,
                     [regime.strip() for regime in args.regimes.split(",") if regime.strip()],
                     learning_rates(args.learning_rates))
    plan_splits(args.per_class)
    for run in runs:
        TrainSettings(run["backbone"], epochs=args.epochs, batch_size=DEMO["batch_size"],
                      learning_rate=run["learning_rate"], image_size=args.image_size, weights=DEMO["weights"],
                      regime=run["regime"]).validate()
    make_folder(out, "--out")  # last: a file, or a place that cannot be created, is one line too
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="a new folder for everything")
    parser.add_argument("--backbones", default=",".join(DEMO["backbones"]),
                        help=f"any of {', '.join(settings.ALL_BACKBONES)}")
    parser.add_argument("--regimes", default=",".join(DEMO["regimes"]), help=" and/or ".join(settings.REGIMES))
    parser.add_argument("--learning-rates", default=",".join(f"{rate:g}" for rate in DEMO["learning_rates"]),
                        help="comma-separated; each row's is chosen on validation among them")
    parser.add_argument("--per-class", type=int, default=DEMO["per_class"])
    parser.add_argument("--epochs", type=int, default=DEMO["epochs"])
    parser.add_argument("--image-size", type=int, default=DEMO["image_size"])
    args = parser.parse_args()
    try:
        return run(args, check(args))
    except UserError as error:
        print(f"demo: error: {error}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, out: Path) -> int:
    """synth, then the pipeline through the local runner, then the leaderboard."""
    started = time.monotonic()
    print(f"demo: writing a synthetic dataset to {out / 'synthetic'}", flush=True)
    synthesize(out / "synthetic", per_class=args.per_class, seed=settings.SEED,
               min_size=DEMO["film_size"][0], max_size=DEMO["film_size"][1])
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(out / "pipeline-root"))
    complete = True
    try:
        chest_xray_benchmark(
            source=str(out / "synthetic"), backbones=args.backbones.split(","), regimes=args.regimes.split(","),
            epochs=args.epochs,
            batch_size=DEMO["batch_size"], learning_rates=learning_rates(args.learning_rates),
            image_size=args.image_size,
            weights=DEMO["weights"], processed_image_size=DEMO["processed_image_size"],
            val_fraction=DEMO["val_fraction"], device=DEMO["device"], checkpoint_root=str(out / "checkpoints"))
    except RuntimeError:
        complete = False  # the verdict step failed: a training is missing; its report of the others is there
    reports = sorted((out / "pipeline-root").rglob("leaderboard.csv"))
    if not reports:
        print(f"demo: the pipeline failed before its report; see the log above ({out})", file=sys.stderr)
        return 1
    report = reports[0].parent
    print(f"\ndemo: finished in {time.monotonic() - started:.0f} s\n")
    columns = ["backbone", "regime", "test_accuracy", "sensitivity", "specificity", "roc_auc", "vs_best", "brier",
               "learning_time", "epochs"]
    table = pd.read_csv(report / "leaderboard.csv").astype({"epochs": "Int64"})  # the Ensemble row has none
    print(table[[c for c in columns if c in table]].to_string(index=False, float_format="%.3f"), "\n")
    print(f"demo: the report is in {report}\n      open {report / 'report.html'}")
    if not complete:
        print("demo: a training is missing from the comparison (see the report's Missing section)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
