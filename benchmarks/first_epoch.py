"""A training's first epoch with the optimizer built before `fit`, against Keras' default of building it inside the
first trace of the training step, in one run: seconds of `fit` for one epoch of three small batches (64 px, or the
backbone's smallest size), where tracing is nearly all of it, and how many times the training step was traced.
Each measurement is its own process (TensorFlow on the CPU), alternating between the two, so that both see the
same load.

    python benchmarks/first_epoch.py [--backbones MobileNet,ResNet50] [--rounds 2]

Why: on TensorFlow without a distribution strategy, Keras 3 defers building the optimizer to the first traced
step; the variables made there make TensorFlow trace the step a second time. `cxr train` builds the optimizer
first (cxr/training/train.py; docs/performance.md has the figures).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys

from cxr.errors import UserError
from cxr.training.plan import canonical_backbone

FIRST_EPOCH = """
import os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras, numpy as np, tensorflow as tf
from keras.src.backend.tensorflow.trainer import TensorFlowTrainer
from cxr.training.backbones import get_backbone, input_size
from cxr.training.model import build_model

traces = []
train_step = TensorFlowTrainer.train_step
TensorFlowTrainer.train_step = lambda self, data: traces.append(1) or train_step(self, data)
backbone, built_first = sys.argv[1], sys.argv[2] == "built"
size = input_size(get_backbone(backbone), 64)
model = build_model(get_backbone(backbone), size, dense_units=16, dropout=0.1, weights="none")
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
if built_first:
    model.optimizer.build(model.trainable_variables)
rng = np.random.default_rng(0)
films = tf.data.Dataset.from_tensor_slices((rng.integers(0, 255, (48, size, size, 1), dtype=np.uint8),
                                            rng.integers(0, 2, 48).astype("float32"))).batch(16)
started = time.perf_counter()
model.fit(films, epochs=1, verbose=0)
print(f"seconds {time.perf_counter() - started:.2f} traces {len(traces)}")
"""


def first_epoch(backbone: str, mode: str) -> tuple[float, int]:
    """Seconds of the first epoch's `fit` and the number of traces of the training step, in a fresh process."""
    run = subprocess.run([sys.executable, "-c", FIRST_EPOCH, backbone, mode], capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"first_epoch: the {backbone} training process failed:\n{run.stderr[-2000:]}")
    seconds, traces = re.search(r"^seconds (\S+) traces (\d+)$", run.stdout, re.MULTILINE).groups()
    return float(seconds), int(traces)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", default="MobileNet,ResNet50", help="comma-separated backbone names")
    parser.add_argument("--rounds", type=int, default=2, help="processes per backbone and mode, alternating")
    args = parser.parse_args()
    if args.rounds < 1:
        sys.exit(f"first_epoch: --rounds must be 1 or more, got {args.rounds}")
    try:
        backbones = [canonical_backbone(name.strip()) for name in args.backbones.split(",") if name.strip()]
    except UserError as error:
        sys.exit(f"first_epoch: --backbones: {error}")
    if not backbones:
        sys.exit("first_epoch: --backbones names no backbone")
    print("backbone     mode                 first epoch (s)   traces")
    for backbone in backbones:
        measured: dict[str, list[tuple[float, int]]] = {"in the first trace": [], "built before fit": []}
        for _ in range(args.rounds):
            measured["in the first trace"].append(first_epoch(backbone, "lazy"))
            measured["built before fit"].append(first_epoch(backbone, "built"))
        medians = {mode: statistics.median(s for s, _ in runs) for mode, runs in measured.items()}
        for mode, runs in measured.items():
            print(f"{backbone:<12} {mode:<20} {medians[mode]:>15.1f}   {runs[0][1]:>6}")
        ratio = medians["in the first trace"] / medians["built before fit"]
        print(f"{backbone:<12} ratio                {ratio:>14.2f}x")


if __name__ == "__main__":
    main()
