"""Epoch time of `cxr train` on the JAX backend against the TensorFlow backend, same data, same settings, in one
run (each backend in its own process: Keras picks its backend once, at import).

    python benchmarks/backend_epoch_time.py [--backbones MobileNet ResNet50] [--image-size 64] [--per-class 40]

The real training path: the tf.data reader over preprocessed TFRecords feeds the model on either backend.
Epoch 1 includes tracing or compiling; epoch 2 and later are the steady state the ratio is taken on. On a CPU,
TensorFlow runs without XLA (cxr train's default there) and JAX always compiles with XLA.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("tensorflow", "jax")


def child(data: Path, out: Path, backbones: list[str], image_size: int, epochs: int) -> None:
    """Train each backbone on this process's backend; print one JSON line of epoch times per backbone."""
    from cxr.devices import backend
    from cxr.training.train import TrainSettings, train

    for name in backbones:
        metrics = train(data, out / name, TrainSettings(backbone=name, epochs=epochs, image_size=image_size,
                                                        weights="none", learning_rate=1e-3, patience=epochs))
        history = json.loads((out / name / "checkpoint" / "state.json").read_text())["history"]
        print(json.dumps({"backend": backend(), "backbone": metrics["backbone"], "xla": metrics["xla"],
                          "images": metrics["train_images"], "seconds": [row["seconds"] for row in history]}),
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["MobileNet", "ResNet50"])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # the preprocessed data, in a child
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(tempfile.mkdtemp(prefix="epoch-time-")), args.backbones, args.image_size,
              args.epochs)
        return

    from cxr.data.ingest import ingest
    from cxr.data.preprocess import Settings, preprocess
    from cxr.data.synth import synthesize

    results = {}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        synthesize(work / "synthetic", per_class=args.per_class, min_size=256, max_size=384)
        ingest(str(work / "synthetic"), work / "raw")
        preprocess(work / "raw", work / "processed", Settings(image_size=args.image_size, val_fraction=0.2))
        for backend in BACKENDS:
            env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
            command = [sys.executable, __file__, "--child", str(work / "processed"), "--image-size",
                       str(args.image_size), "--epochs", str(args.epochs), "--backbones", *args.backbones]
            output = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True).stdout
            for line in output.splitlines():
                if line.startswith("{"):
                    row = json.loads(line)
                    results[row["backend"], row["backbone"]] = row
    steady = {key: min(row["seconds"][1:]) for key, row in results.items()}
    print(f"\n{os.cpu_count()} CPU cores, {args.image_size} px, batch 32, "
          f"{next(iter(results.values()))['images']} training films, {args.epochs} epochs, fastest of epochs 2+")
    print(f"{'backbone':<12} {'TF epoch 1':>10} {'TF epoch':>9} {'JAX epoch 1':>11} {'JAX epoch':>10} "
          f"{'JAX speed-up':>12}")
    for name in dict.fromkeys(row["backbone"] for row in results.values()):
        tf_row, jax_row = results["tensorflow", name], results["jax", name]
        print(f"{name:<12} {tf_row['seconds'][0]:>9.1f}s {steady['tensorflow', name]:>8.1f}s "
              f"{jax_row['seconds'][0]:>10.1f}s {steady['jax', name]:>9.1f}s "
              f"{steady['tensorflow', name] / steady['jax', name]:>11.2f}x")


if __name__ == "__main__":
    main()
