"""The `tensorflow` wheel against `tensorflow-cpu` on this CPU, in one run: films/s of a MobileNet forward pass
(224 px, batch 32, random weights and films) in this environment's TensorFlow and in a temporary virtualenv holding
`tensorflow-cpu` and `keras` at the same versions, alternating between the two so that both see the same load.

    python benchmarks/tensorflow_wheels.py [--rounds 2]

Why: keras-hub needs tensorflow-text, which needs the full `tensorflow` package, so the project installs it on
CPUs too instead of `tensorflow-cpu` (docs/decisions.md). This checks that the CPU kernels cost the same in both.
The temporary virtualenv downloads about 270 MB from the package index.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import venv
from importlib.metadata import version
from pathlib import Path

FORWARD = """
import os, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras, numpy as np, tensorflow as tf
model = keras.applications.MobileNet(include_top=False, weights=None, input_shape=(224, 224, 3))
films = np.random.default_rng(0).uniform(0, 255, (32, 224, 224, 3)).astype("float32")
forward = tf.function(lambda batch: model(batch, training=False))
forward(films)  # tracing, not timed
for _ in range(3):
    started = time.perf_counter()
    for _ in range(8):
        forward(films).numpy()
    print(f"rate {8 * 32 / (time.perf_counter() - started):.2f}")
"""


def rates(python: Path) -> list[float]:
    """The three films/s figures one process prints."""
    out = subprocess.run([str(python), "-c", FORWARD], capture_output=True, text=True, check=True).stdout
    return [float(value) for value in re.findall(r"^rate (\S+)$", out, re.MULTILINE)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="processes per wheel, alternating")
    args = parser.parse_args()
    if args.rounds < 1:
        sys.exit(f"tensorflow_wheels: --rounds must be 1 or more, got {args.rounds}")
    pins = [f"tensorflow-cpu=={version('tensorflow')}", f"keras=={version('keras')}"]
    with tempfile.TemporaryDirectory() as temporary:
        print(f"installing {' '.join(pins)} into a temporary virtualenv", flush=True)
        venv.create(temporary, with_pip=True)
        other = Path(temporary) / "bin" / "python"
        subprocess.run([str(other), "-m", "pip", "install", "--quiet", *pins], check=True)
        measured: dict[str, list[float]] = {"tensorflow": [], "tensorflow-cpu": []}
        for _ in range(args.rounds):
            measured["tensorflow"] += rates(Path(sys.executable))
            measured["tensorflow-cpu"] += rates(other)
    for wheel, values in measured.items():
        print(f"  {wheel:<15} {statistics.median(values):6.1f} films/s (median; {min(values):.1f}-{max(values):.1f})")
    ratio = statistics.median(measured["tensorflow"]) / statistics.median(measured["tensorflow-cpu"])
    print(f"  tensorflow / tensorflow-cpu: {ratio:.2f}x")


if __name__ == "__main__":
    main()
