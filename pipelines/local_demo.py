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

from cxr import files, settings
from cxr.data.synth import plan_splits, synthesize
from cxr.errors import UserError
from cxr.outputs import make_folder
from cxr.results.leaderboard import cells
from cxr.training.plan import TrainSettings, plan_runs
from pipelines.chest_xray_benchmark import chest_xray_benchmark
from pipelines.local_progress import progress_view

# CPU-sized settings, measured on a 2-core machine (README, "make demo"): small films, from-scratch weights
# (no ImageNet download), a learning rate for training from scratch, few epochs. At 32 px the cheap backbones
# cost little; InceptionV3 and Xception are raised to their minimum inputs, 75 and 71 px, and dominate the time.
DEMO = {
    # Three of the seed's five, each in both regimes: on the shared 2-core machine the five x two took 1,675 s
    # (995 CPU-seconds) and MobileNet, InceptionV3 and ResNet50 x two 1,378 s (709 CPU-seconds), far over the
    # demo's 6 minutes; fine-tuning InceptionV3 and ResNet50 took 355 s each there, VGG16 105 s. InceptionV3 is the
    # one that learns these films from scratch at this size (test ROC AUC 1.000 in both runs); MobileNet and VGG16
    # are the cheapest, and VGG16 shows the regimes apart (frozen ROC AUC 0.885, fine-tuned 0.842 in the first run).
    # Listed dearest first: kfp.local runs two trainings at a time, in the plan's order (fine-tuning first, then
    # this order), so the two long fine-tunings start at once and the short ones fill in.
    "backbones": ("InceptionV3", "VGG16", "MobileNet"),
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
LOG = "demo.log"  # in the run folder: everything kfp.local and the tasks print (the screen shows one line a task)
# The leaderboard's columns the demo prints, in this order (the report has them all).
CONSOLE_COLUMNS = ["backbone", "regime", "head", "test_accuracy", "sensitivity", "specificity", "roc_auc", "vs_best",
                   "brier", "learning_time", "epochs"]


def names(text: str) -> list[str]:
    """A comma-separated list as the user typed it, blanks around each name dropped and empty entries ignored."""
    return [name.strip() for name in text.split(",") if name.strip()]


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


def check(args: argparse.Namespace) -> tuple[Path, list[dict]]:
    """Every setting checked before the first step (synth takes seconds, the pipeline minutes): the output folder,
    the backbones, regimes, heads and learning rates, the film count and the sizes, each refused in one line.
    Returns the output folder and the plan's trainings, their names spelled as the registry spells them."""
    out = args.out.resolve()
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"{out} is not empty; remove it or pass --out NEW_FOLDER")
    runs = plan_runs(names(args.backbones), settings.SEEDS, names(args.regimes), names(args.heads),
                     learning_rates(args.learning_rates))
    plan_splits(args.per_class)
    for run in runs:
        TrainSettings(run["backbone"], epochs=args.epochs, batch_size=DEMO["batch_size"],
                      learning_rate=run["learning_rate"], image_size=args.image_size, weights=DEMO["weights"],
                      regime=run["regime"], head=run["head"]).validate()
    make_folder(out, "--out")  # last: a file, or a place that cannot be created, is one line too
    return out, runs


def build_parser() -> argparse.ArgumentParser:
    """The demo's options, each with its default shown by --help."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="a new folder for everything")
    parser.add_argument("--backbones", default=",".join(DEMO["backbones"]),
                        help=f"comma-separated, in any letter case: any of {', '.join(settings.ALL_BACKBONES)}")
    parser.add_argument("--regimes", default=",".join(DEMO["regimes"]),
                        help=f"comma-separated, in any letter case: {' and/or '.join(settings.REGIMES)}")
    parser.add_argument("--heads", default=",".join(settings.PIPELINE_HEADS),
                        help=f"comma-separated, in any letter case: any of {', '.join(settings.HEADS)} (knn: frozen "
                        "only)")
    parser.add_argument("--learning-rates", default=",".join(f"{rate:g}" for rate in DEMO["learning_rates"]),
                        help="comma-separated; each row's is chosen on validation among them (a probe fitted by "
                        "scikit-learn has none)")
    parser.add_argument("--per-class", type=int, default=DEMO["per_class"], help="synthetic films per class")
    parser.add_argument("--epochs", type=int, default=DEMO["epochs"], help="epochs per training")
    parser.add_argument("--image-size", type=int, default=DEMO["image_size"],
                        help="input size in pixels, raised to a backbone's minimum (InceptionV3 75, Xception 71)")
    parser.add_argument("--verbose", action="store_true",
                        help="print everything kfp.local and the tasks print, instead of one line per task")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args, *check(args))
    except UserError as error:
        print(f"demo: error: {error}", file=sys.stderr)
        return 2


def shown(path: Path) -> str:
    """`path` relative to the working directory when it lies below it (runs/demo-TIME/report), else whole."""
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def run_pipeline(args: argparse.Namespace, out: Path, runs: list[dict]) -> bool:
    """The pipeline through kfp.local; False when it ended failed (the verdict step: a training is missing)."""
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(out / "pipeline-root"))
    try:
        chest_xray_benchmark(
            source=str(out / "synthetic"), backbones=list(dict.fromkeys(run["backbone"] for run in runs)),
            regimes=list(dict.fromkeys(run["regime"] for run in runs)),
            heads=list(dict.fromkeys(run["head"] for run in runs)), epochs=args.epochs,
            batch_size=DEMO["batch_size"], learning_rates=learning_rates(args.learning_rates),
            image_size=args.image_size,
            weights=DEMO["weights"], processed_image_size=DEMO["processed_image_size"],
            val_fraction=DEMO["val_fraction"], device=DEMO["device"], checkpoint_root=str(out / "checkpoints"))
    except RuntimeError:
        return False  # the verdict step failed: a training is missing; its report of the others is there
    return True


def run(args: argparse.Namespace, out: Path, runs: list[dict]) -> int:
    """synth, then the pipeline through the local runner (its output in demo.log unless --verbose), then the
    leaderboard and the report's short path."""
    started = time.monotonic()
    synthesize(out / "synthetic", per_class=args.per_class, seed=settings.SEED,
               min_size=DEMO["film_size"][0], max_size=DEMO["film_size"][1])
    print(f"demo: {2 * args.per_class} synthetic films in {shown(out / 'synthetic')}; {len(runs)} trainings",
          flush=True)
    log = out / LOG
    if args.verbose:
        complete = run_pipeline(args, out, runs)
    else:
        print(f"demo: running the pipeline through kfp.local; everything it prints goes to {shown(log)}", flush=True)
        with progress_view(log, sys.stdout) as view:
            complete = run_pipeline(args, out, runs)
        if view.failed:
            print(f"demo: {', '.join(task.name for task in view.failed)} failed; the full log: {shown(log)}",
                  file=sys.stderr)
    reports = sorted((out / "pipeline-root").rglob(files.LEADERBOARD_CSV))
    if not reports:
        print(f"demo: the pipeline failed before its report; see {'the log above' if args.verbose else shown(log)}",
              file=sys.stderr)
        return 1
    report = out / "report"
    report.symlink_to(reports[0].parent.relative_to(out), target_is_directory=True)
    print(f"\ndemo: finished in {time.monotonic() - started:.0f} s\n")
    table = pd.read_csv(report / files.LEADERBOARD_CSV)
    shown_columns = [column for column in CONSOLE_COLUMNS if column in table]
    print(cells(table[shown_columns], decimals=3).to_string(index=False), "\n")
    print(f"demo: the report:    {shown(report / files.REPORT_HTML)}\n"
          f"      leaderboard:   {shown(report / files.LEADERBOARD_MD)}\n"
          f"      graphs:        {shown(report)}/*.png")
    if not args.verbose:
        print(f"      the full log:  {shown(log)}")
    if not complete:
        print("demo: a training is missing from the comparison (see the report's Missing section)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
