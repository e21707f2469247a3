"""The GPU benchmark's code path, run as CI runs it: `gpu_throughput.py --smoke` on the CPU, on Keras-on-JAX, in a
fresh process. Timings are printed, never asserted (they measure nothing at smoke size)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from cxr import settings

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_throughput_smoke_prints_a_number_per_backbone_and_mode_and_the_projection():
    environment = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2"}
    environment.pop("PYTHONPATH", None)  # the script finds the cxr source tree itself, as on the GPU machine
    result = subprocess.run([sys.executable, "benchmarks/gpu_throughput.py", "--smoke"], cwd=ROOT, env=environment,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Keras 3.15" in result.stdout and "on jax" in result.stdout
    number = r"\s+(\d+\.\d+)"
    for backbone in settings.BACKBONES:
        for mode in ("mixed precision \\+ XLA\\s+mixed_bfloat16", "fp32, no XLA/jit\\s+float32"):
            row = re.search(rf"^{backbone}\s+\d+\s+{mode}{number}{number}{number}$", result.stdout, re.MULTILINE)
            assert row, f"no {mode} row for {backbone}:\n{result.stdout}"
            assert float(row.group(2)) > 0  # images/s
        assert re.search(rf"^\s+{backbone}\s+\d+\.\d\dx$", result.stdout, re.MULTILINE)  # mixed vs fp32
    assert re.search(r"one GPU, one after another:\s+\d+\.\d min .* 5 GPUs in parallel:\s+\d+\.\d min",
                     result.stdout)
    # Nothing it imports pulls in TensorFlow, which the GPU machine does not have.
    imported = subprocess.run(
        [sys.executable, "-c", "import runpy, sys; runpy.run_path('benchmarks/gpu_throughput.py', run_name='x'); "
         "print(sorted({m.split('.')[0] for m in sys.modules}))"],
        cwd=ROOT, env=environment, capture_output=True, text=True, check=True).stdout
    assert "'keras'" in imported and "'jax'" in imported and "'tensorflow'" not in imported

def test_concurrent_mode_times_trainings_at_once_and_one_after_another():
    environment = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "benchmarks/gpu_throughput.py", "--smoke", "--concurrent",
                             "--backbones", "MobileNet", "VGG16"], cwd=ROOT, env=environment, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for backbone in ("MobileNet", "VGG16"):  # images/s alone, and sharing
        assert re.search(rf"^{backbone}\s+\d+\.\d+\s+\d+\.\d+$", result.stdout, re.MULTILINE), result.stdout
    assert re.search(r"one after another:\s+\d+\.\d s", result.stdout)
    assert re.search(r"all at once\s+:\s+\d+\.\d s until all are done: \d+\.\d\dx", result.stdout)
