"""What the local pipeline costs beyond its tasks' own work: the wall time of a tiny one-backbone run through
KFP's local runner, against the same library calls (ingest, preprocess, train, evaluate, report) timed in this
process, on the same synthetic data.

    python benchmarks/orchestration_overhead.py [--backbone MobileNet] [--per-class 24] [--epochs 1]

The difference is what kfp.local adds: a fresh Python per task (imports: TensorFlow alone takes seconds),
artifact copies, the runner's bookkeeping. It is fixed per task, so it matters for tiny runs and vanishes
against a real training.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from cxr.data.ingest import ingest
from cxr.data.preprocess import Settings, preprocess
from cxr.data.synth import synthesize
from cxr.results.evaluate import evaluate
from cxr.results.explain import explain
from cxr.results.report import write_report
from cxr.serving.export import export_best_of
from cxr.training.train import TrainSettings, train

# Tiny, so that the fixed costs show: 32-px films from scratch, batches of 16.
TINY = {"image_size": 32, "batch_size": 16, "learning_rate": 1e-3, "weights": "none", "val_fraction": 0.2}


def timed(label: str, function, *args, **kwargs) -> float:
    started = time.perf_counter()
    function(*args, **kwargs)
    seconds = time.perf_counter() - started
    print(f"  {label:<10} {seconds:6.1f} s", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="MobileNet")
    parser.add_argument("--per-class", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        synthesize(work / "synthetic", per_class=args.per_class, min_size=64, max_size=128)

        print("the library calls, in this process:")
        options = TrainSettings(backbone=args.backbone, epochs=args.epochs, image_size=TINY["image_size"],
                                batch_size=TINY["batch_size"], learning_rate=TINY["learning_rate"],
                                weights=TINY["weights"])
        direct = sum([
            timed("ingest", ingest, str(work / "synthetic"), work / "raw"),
            timed("preprocess", preprocess, work / "raw", work / "processed",
                  Settings(image_size=TINY["image_size"], val_fraction=TINY["val_fraction"])),
            timed("train", train, work / "processed", work / "model", options),
            timed("evaluate", evaluate, work / "processed", work / "model", work / "result",
                  batch_size=TINY["batch_size"]),
            timed("explain", explain, work / "processed", work / "model", work / "result", work / "explain"),
            timed("report", write_report, [work / "result"], work / "report", explain_dirs=[work / "explain"],
                  data_dir=work / "processed"),
            timed("export", export_best_of, [work / "model"], [work / "result"], work / "best"),
        ])

        from kfp import local

        from pipelines.chest_xray_benchmark import chest_xray_benchmark

        print("the same through kfp.local (SubprocessRunner):", flush=True)
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(work / "pipeline-root"))
        started = time.perf_counter()
        chest_xray_benchmark(source=str(work / "synthetic"), backbones=[args.backbone], epochs=args.epochs,
                             batch_size=TINY["batch_size"], learning_rates=[TINY["learning_rate"]],
                             image_size=TINY["image_size"], weights=TINY["weights"],
                             processed_image_size=TINY["image_size"], val_fraction=TINY["val_fraction"],
                             device="cpu", checkpoint_root=str(work / "checkpoints"))
        pipeline = time.perf_counter() - started
    # plan, ingest, preprocess, train (a supervising parent and its training child), evaluate, explain,
    # aggregate (report and export), verdict
    tasks = 8
    print(f"\nlibrary calls: {direct:6.1f} s; kfp.local pipeline ({tasks} tasks): {pipeline:6.1f} s: "
          f"{pipeline / direct:.2f}x, {pipeline - direct:.1f} s of orchestration ({(pipeline - direct) / tasks:.1f} s "
          "per task)")


if __name__ == "__main__":
    main()
