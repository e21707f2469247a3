"""Reading a trained model and exporting it, the way cxr does against Keras' own way, in one run: seconds to load
model.keras's weights (Keras given the archive, against the archive's weights file extracted first, as
cxr.serving.trained.load_model does) and to write the serving SavedModel (keras.export.ExportArchive tracking the
model, against the tf.Module of cxr.serving.export.write_saved_model), with the SavedModel's size. Each
measurement is its own process (TensorFlow on the CPU), the two ways alternating, so that both see the same load.

    python benchmarks/model_io.py [--backbones InceptionV3,VGG16] [--rounds 2]

Every model evaluates, explains, predicts, exports and serves after a load, so the load is paid by each of
those commands (and by each of the pipeline's evaluate, explain and aggregate steps); the export once per study.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from cxr.errors import UserError
from cxr.training.plan import canonical_backbone

# Writes a trained-looking model.keras (random weights, Adam's slots built, as `cxr train` saves it) for a backbone.
MAKE_MODEL = """
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras
from cxr.training.backbones import get_backbone, input_size
from cxr.training.model import build_model
backbone, path = get_backbone(sys.argv[1]), sys.argv[2]
model = build_model(backbone, input_size(backbone, 32), dense_units=16, dropout=0.1, weights="none")
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
model.optimizer.build(model.trainable_variables)
model.save(path)
print(input_size(backbone, 32))
"""

MEASURE = """
import json, os, sys, time
from pathlib import Path
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras, tensorflow as tf
from cxr.serving.export import INPUT_NAME, serving_function, write_saved_model
from cxr.serving.trained import Preprocessing, load_weights_of_archive
from cxr.training.backbones import get_backbone
from cxr.training.model import build_model
backbone, size, archive, way, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], Path(sys.argv[5])
model = build_model(get_backbone(backbone), size, dense_units=16, dropout=0.1, weights="none")
started = time.perf_counter()
model.load_weights(archive) if way == "keras" else load_weights_of_archive(model, archive)
loaded = time.perf_counter() - started
prep, started = Preprocessing(size, size), time.perf_counter()
if way == "keras":
    export = keras.export.ExportArchive()
    export.track(model)
    export.add_endpoint("serving_default", serving_function(model, prep, 0.5),
                        input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_NAME)])
    export.write_out(str(out), verbose=False)
else:
    write_saved_model(model, prep, 0.5, out)
exported = time.perf_counter() - started
saved_bytes = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
print(json.dumps({"load": loaded, "export": exported, "megabytes": saved_bytes / 1e6}))
"""

WAYS = {"keras": "Keras given the archive / ExportArchive", "cxr": "extracted first / tf.Module (cxr)"}


def _run(script: str, *arguments: str) -> str:
    run = subprocess.run([sys.executable, "-c", script, *arguments], capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"model_io: a measurement process for {arguments[0]} failed:\n{run.stderr[-2000:]}")
    return run.stdout.strip().splitlines()[-1]


def measure(backbone: str, rounds: int, folder: Path) -> dict[str, dict[str, list[float]]]:
    """Per way, the seconds of each load and export and the SavedModel's megabytes, `rounds` each."""
    archive = folder / f"{backbone}.keras"
    size = _run(MAKE_MODEL, backbone, str(archive))
    found: dict[str, dict[str, list[float]]] = {way: {"load": [], "export": [], "megabytes": []} for way in WAYS}
    for round_number in range(rounds):
        for way in (list(WAYS) if round_number % 2 == 0 else list(WAYS)[::-1]):
            out = folder / f"{backbone}-{way}-{round_number}"
            result = json.loads(_run(MEASURE, backbone, size, str(archive), way, str(out)))
            for key, value in result.items():
                found[way][key].append(value)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", default="InceptionV3,VGG16", help="comma-separated registry names")
    parser.add_argument("--rounds", type=int, default=2, help="measurements per way and backbone (each a process)")
    args = parser.parse_args()
    try:
        backbones = [canonical_backbone(name) for name in args.backbones.split(",") if name.strip()]
    except UserError as error:
        sys.exit(f"model_io: {error}")
    if not backbones:
        sys.exit("model_io: --backbones is empty")
    if args.rounds < 1:
        sys.exit(f"model_io: --rounds {args.rounds} is below 1")
    print(f"{'backbone':<12} {'way':<42} {'load s':>7} {'export s':>9} {'SavedModel MB':>14}")
    with tempfile.TemporaryDirectory(prefix="model-io-") as folder:
        for backbone in backbones:
            found = measure(backbone, args.rounds, Path(folder))
            median = {way: {key: statistics.median(values) for key, values in found[way].items()} for way in WAYS}
            for way, label in WAYS.items():
                print(f"{backbone:<12} {label:<42} {median[way]['load']:>7.2f} {median[way]['export']:>9.2f} "
                      f"{median[way]['megabytes']:>14.0f}")
            print(f"{'':<12} {'ratio, Keras way / cxr way':<42} "
                  f"{median['keras']['load'] / median['cxr']['load']:>6.2f}x "
                  f"{median['keras']['export'] / median['cxr']['export']:>8.2f}x "
                  f"{median['keras']['megabytes'] / median['cxr']['megabytes']:>13.2f}x")


if __name__ == "__main__":
    main()
