"""What the whole study costs on this machine: the frozen-feature study of the seed's five backbones at native sizes,
end to end (ingest -> preprocess -> train -> evaluate -> report), against the fine-tune study projected from its
measured epoch time, in the same run.

    python benchmarks/study_cost.py [--scale 1.0] [--backbones MobileNet,...] [--heads seed,linear,knn]
                                    [--finetune-films 128]
                                    [--weights none] [--keep DIR]

Films are synthetic, of the real archive's count and sizes (5,856 films of 1,000-2,500 px at --scale 1; a fraction
at a smaller --scale). Each stage runs as its `cxr` command in a process of its own, as a pipeline task does, and
is timed from outside. The frozen study's trainings are timed whole: the features are extracted once per backbone
(one forward pass over every film) and the head trains on them.

The fine-tune study is not run (days on a CPU): each backbone fine-tunes for two epochs on --finetune-films
training films, and its second epoch (the first one includes tracing and compiling) is scaled to the real train
split and 30 epochs. That epoch time includes the validation pass over its validation films, so the projection
carries validation at the same proportion. `--weights none` (the default here: ImageNet weights need a download)
costs exactly what ImageNet weights cost; only the accuracy means nothing then.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cxr import settings
from cxr.data.synth import MAX_PER_CLASS, plan_splits

CXR = str(Path(sys.executable).with_name("cxr"))
REAL_FILMS = 5_856  # train 1,341 + 3,875, val 8 + 8, test 234 + 390 (docs/decisions.md, "The dataset")
REAL_TRAIN_FILMS = 5_216
FILM_SIZES = (1000, 2500)  # pixels, the real films' range


def per_class_for(films: int) -> int:
    """The `cxr synth --per-class` whose dataset holds the closest number of films to `films`."""
    def total(per_class: int) -> int:
        return sum(plan.normal + plan.pneumonia for plan in plan_splits(per_class))
    return min(range(4, MAX_PER_CLASS + 1), key=lambda n: abs(total(n) - films))


def run(label: str, *words: str) -> float:
    """Run one `cxr` command, print and return its wall time; stop the benchmark on a failure."""
    started = time.perf_counter()
    result = subprocess.run([CXR, *words], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"study_cost: {label} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    print(f"  {label:<28} {seconds:8.1f} s", flush=True)
    return seconds


def dataset(work: Path, name: str, per_class: int) -> tuple[Path, dict[str, float]]:
    """Synthesize, ingest and preprocess a dataset under work/name; the processed folder and each stage's time."""
    synthetic, raw, processed = work / f"{name}-synthetic", work / f"{name}-raw", work / f"{name}-processed"
    times = {
        "synth (stands in for the download)": run(f"{name}: synth", "synth", str(synthetic), "--per-class",
                                                  str(per_class), "--min-size", str(FILM_SIZES[0]),
                                                  "--max-size", str(FILM_SIZES[1])),
        "ingest": run(f"{name}: ingest", "ingest", "--source", str(synthetic), "--out", str(raw)),
        "preprocess": run(f"{name}: preprocess", "preprocess", "--raw", str(raw), "--out", str(processed)),
    }
    return processed, times


def frozen_study(work: Path, processed: Path, backbones: list[str], heads: list[str],
                 weights: str) -> dict[str, float]:
    """Train (extraction + head) and evaluate every backbone with every head in the frozen regime, then the report.
    The first head of a backbone extracts its features; the others reuse the cache."""
    times, results = {}, []
    films = len((processed / "manifest.csv").read_text().splitlines()) - 1  # every split is extracted
    for backbone in backbones:
        for head in heads:
            model, result = work / f"frozen-{backbone}-{head}", work / f"frozen-{backbone}-{head}-result"
            times[f"{backbone} {head}: train"] = run(f"{backbone} {head}: train", "train", "--data", str(processed),
                                                     "--backbone", backbone, "--out", str(model), "--regime",
                                                     "frozen", "--head", head, "--weights", weights,
                                                     "--features", str(work / "features"))
            metrics = json.loads((model / "train_metrics.json").read_text())
            if metrics["feature_seconds"]:
                print(f"    features of {films} films: {metrics['feature_seconds']:.1f} s "
                      f"({films / metrics['feature_seconds']:.1f} films/s, model building included)", flush=True)
            print(f"    {head} head: {metrics['learning_time_seconds']:.1f} s of training "
                  f"({metrics['epochs_run']} epochs)", flush=True)
            times[f"{backbone} {head}: evaluate"] = run(f"{backbone} {head}: evaluate", "evaluate", "--data",
                                                        str(processed), "--model", str(model), "--out", str(result))
            results.append(str(result))
    times["report"] = run("report", "report", *results, "--out", str(work / "report"))
    return times


def finetune_projection(work: Path, processed: Path, backbones: list[str], weights: str) -> dict[str, float]:
    """Each backbone's projected 30-epoch fine-tuning over the real train split, in seconds."""
    projected = {}
    for backbone in backbones:
        model = work / f"finetune-{backbone}"
        run(f"{backbone}: fine-tune 2 epochs", "train", "--data", str(processed), "--backbone", backbone,
            "--out", str(model), "--regime", "finetune", "--weights", weights, "--epochs", "2", "--patience", "2")
        metrics = json.loads((model / "train_metrics.json").read_text())
        history = json.loads((model / "checkpoint" / "state.json").read_text())["history"]
        epoch = history[-1]["seconds"]
        projected[backbone] = epoch / metrics["train_images"] * REAL_TRAIN_FILMS * settings.EPOCHS
        print(f"    epoch 2: {epoch:.1f} s for {metrics['train_images']} train films -> 30 epochs of "
              f"{REAL_TRAIN_FILMS:,}: {projected[backbone] / 3600:.1f} h", flush=True)
    return projected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the real archive's 5,856 films")
    parser.add_argument("--backbones", default=",".join(settings.BACKBONES))
    parser.add_argument("--heads", default=",".join(settings.PIPELINE_HEADS), help=", ".join(settings.HEADS))
    parser.add_argument("--finetune-films", type=int, default=128,
                        help="training films of each fine-tune epoch; 0 leaves the fine-tune projection out")
    parser.add_argument("--weights", default="none", help="none (no download) or imagenet")
    parser.add_argument("--keep", type=Path, help="a new folder to keep everything in (default: a temporary one)")
    args = parser.parse_args()
    if not 0 < args.scale <= 1:
        sys.exit(f"study_cost: --scale must be in (0, 1], got {args.scale}")
    if args.finetune_films < 0:
        sys.exit(f"study_cost: --finetune-films must be 0 (no projection) or more, got {args.finetune_films}")
    backbones = args.backbones.split(",")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory() as temporary:
        work = args.keep or Path(temporary)
        if args.keep and args.keep.exists():
            sys.exit(f"study_cost: {args.keep} exists; --keep takes a new folder")
        work.mkdir(parents=True, exist_ok=True)
        per_class = per_class_for(round(REAL_FILMS * args.scale))
        print(f"frozen study: {args.scale:g} of the archive (--per-class {per_class}), native sizes, "
              f"weights {args.weights}, {os.cpu_count()} cores")
        started = time.perf_counter()
        processed, data_times = dataset(work, "study", per_class)
        study_times = frozen_study(work, processed, backbones, args.heads.split(","), args.weights)
        frozen_total = time.perf_counter() - started
        data_seconds = sum(v for k, v in data_times.items() if not k.startswith("synth"))
        frozen_without_synth = data_seconds + sum(study_times.values())

        # About --finetune-films training films: the split keeps ~90 % of train+val for training, 4 in 5 films
        # of a synthetic dataset are training films.
        projected = {}
        if args.finetune_films:
            print("fine-tune epochs:")
            small, _ = dataset(work, "finetune", per_class_for(round(args.finetune_films / 0.8)))
            projected = finetune_projection(work, small, backbones, args.weights)

    print("\nsummary")
    print(f"  frozen study, ingest -> report:       {frozen_without_synth / 60:8.1f} min "
          f"({frozen_total / 60:.1f} min with synth)")
    if args.scale < 1:
        print(f"  frozen study scaled to 5,856 films:   {frozen_without_synth / args.scale / 60:8.1f} min "
              "(linear in films; the fixed start-up costs make this an upper bound)")
    for backbone, seconds in projected.items():
        print(f"  fine-tune {backbone:<14} 30 epochs:  {seconds / 3600:8.1f} h (projected)")
    if projected:
        finetune_total = sum(projected.values())
        frozen_full = frozen_without_synth / args.scale
        print(f"  fine-tune study, {len(projected)} backbones:      {finetune_total / 3600:8.1f} h "
              "(projected, training alone)")
        print(f"  fine-tune / frozen:                   {finetune_total / frozen_full:8.1f}x")


if __name__ == "__main__":
    main()
