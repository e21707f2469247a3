"""Keras backends: training on JAX (the tf.data reader feeding it), its model evaluated under TensorFlow, and the
per-backend device helpers. Each backend runs in its own process, as users run `cxr`: KERAS_BACKEND is read once,
when Keras is first imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_python(code_or_args: list[str], backend: str, cwd: Path, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2",
                   **env}
    result = subprocess.run([sys.executable, *code_or_args], cwd=cwd, env=environment, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow  # 90 s on 2 cores; the default tier builds and compiles on both backends below
@pytest.mark.timeout(600)  # three fresh processes, one training on JAX
def test_a_model_trained_on_jax_evaluates_under_tensorflow_with_the_same_predictions(processed_dataset, tmp_path):
    run_python(["-m", "cxr.cli", "train", "--data", str(processed_dataset), "--backbone", "MobileNet",
                "--out", "model", "--epochs", "1", "--image-size", "32", "--weights", "none",
                "--batch-size", "16"], "jax", tmp_path)
    trained = json.loads((tmp_path / "model" / "train_metrics.json").read_text())
    assert trained["backend"] == "jax" and trained["xla"] is True and trained["device"] == "CPU"
    assert trained["mixed_precision"] is False  # auto: off without a GPU

    run_python(["-m", "cxr.cli", "evaluate", "--data", str(processed_dataset), "--model", "model",
                "--out", "result"], "tensorflow", tmp_path)
    under_tensorflow = pd.read_csv(tmp_path / "result" / "predictions.csv")

    # The JAX model itself, as saved, on the same films: the TensorFlow evaluation must reproduce its outputs,
    # which a model left at its random initialisation (weights not loaded) would not.
    run_python(["-c", f"""
import keras, numpy as np
import cxr.training.backbones  # registers BackbonePreprocessing, the first layer
from cxr.data.reader import read_split
model = keras.saving.load_model("model/model.keras")
np.savetxt("jax.csv", model.predict(read_split({str(processed_dataset)!r}, "test", 32, 16), verbose=0).reshape(-1))
"""], "jax", tmp_path)
    under_jax = np.loadtxt(tmp_path / "jax.csv")  # the reader's order, as evaluate's
    assert len(under_jax) == len(under_tensorflow) > 0
    assert under_tensorflow["probability"].to_numpy() == pytest.approx(under_jax, abs=1e-4)


def test_an_unsupported_backend_is_refused_in_one_line(processed_dataset, tmp_path):
    environment = {**os.environ, "KERAS_BACKEND": "numpy", "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-m", "cxr.cli", "train", "--data", str(processed_dataset),
                             "--backbone", "MobileNet", "--out", "model", "--image-size", "32", "--weights", "none"],
                            cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "KERAS_BACKEND=numpy" in result.stderr and not (tmp_path / "model").exists()


@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_memory_limit_and_precision_per_backend(backend, tmp_path):
    """Without a GPU here, what can fail is the environment JAX reads at start and the policy names; the GPU
    branches run in benchmarks/gpu_throughput.py on the GPU machine (docs/performance.md)."""
    result = run_python(["-c", """
import json, os
from cxr import devices
applied = devices.limit_gpu_memory()
print(json.dumps({"applied": applied, "policy": devices.mixed_precision_policy(),
                  "preallocate": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"),
                  "fraction": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION"),
                  "tensorflow_imported": "tensorflow" in __import__("sys").modules}))
"""], backend, tmp_path, CXR_GPU_MEMORY_FRACTION="0.2" if backend == "jax" else "")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    if backend == "jax":
        assert report["fraction"] == "0.2" and report["preallocate"] is None
        assert report["policy"] == "mixed_bfloat16" and not report["tensorflow_imported"]
    else:
        assert report["policy"] == "mixed_float16" and report["applied"] == "TensorFlow: GPU memory grown on demand"


def test_jax_allocates_on_demand_by_default_and_a_bad_fraction_is_one_line(tmp_path):
    result = run_python(["-c", "import os; from cxr import devices; print(devices.limit_gpu_memory()); "
                               "print(os.environ['XLA_PYTHON_CLIENT_PREALLOCATE'])"], "jax", tmp_path,
                        CXR_GPU_MEMORY_FRACTION="")
    assert result.stdout.split()[-1] == "false"
    from cxr.devices import limit_gpu_memory
    from cxr.errors import UserError

    with pytest.raises(UserError, match="CXR_GPU_MEMORY_FRACTION"):
        limit_gpu_memory("1.5")


@pytest.mark.parametrize("command", ["export", "explain"])
def test_export_and_explain_on_jax_say_in_one_line_to_run_them_on_tensorflow(command, evaluated_mobilenet,
                                                                           processed_dataset, tmp_path):
    """Their outputs are TensorFlow graphs (a SavedModel; Grad-CAM's gradients): on JAX they refuse before
    claiming --out, naming the setting that works; the model trained on either backend loads there."""
    data = ["--data", str(processed_dataset)] if command == "explain" else []
    environment = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-m", "cxr.cli", command, *data, "--model", str(evaluated_mobilenet),
                             "--out", str(tmp_path / "out")], env=environment, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    [line] = [line for line in result.stderr.splitlines() if line.startswith(f"cxr {command}")]
    assert "KERAS_BACKEND is jax here: run it with KERAS_BACKEND=tensorflow" in line
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
