"""The GPU benchmark's code path, run as CI runs it: `gpu_throughput.py --smoke` on the CPU, on Keras-on-JAX, in a
fresh process. Timings are printed, never asserted (they measure nothing at smoke size).

The default tier checks what the script imports; the slow tier (`make test-slow`) runs the smoke on all five
backbones (every mode on MobileNet, the GPU's training mode on the others), the keras-hub backbones' features and
`--concurrent`: compiling a backbone on JAX is most of a smoke run's time on a CPU."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cxr import settings

ROOT = Path(__file__).resolve().parent.parent


def _jax_environment(**extra: str) -> dict[str, str]:
    environment = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2", **extra}
    environment.pop("PYTHONPATH", None)  # the script finds the cxr source tree itself, as on the GPU machine
    return environment


def _smoke(*arguments: str, quick_xla: dict[str, str], timeout: float) -> str:
    """`gpu_throughput.py --smoke` with `arguments`; its standard output, once it has exited 0."""
    result = subprocess.run([sys.executable, "benchmarks/gpu_throughput.py", "--smoke", *arguments], cwd=ROOT,
                            env=_jax_environment(**quick_xla), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _assert_a_row_per_mode_and_the_projection(stdout: str, backbones: list[str]) -> None:
    assert "Keras 3.15" in stdout and "on jax" in stdout
    number = r"\s+(\d+\.\d+)"
    for backbone in backbones:
        for mode in ("mixed precision \\+ XLA\\s+mixed_bfloat16", "features, mixed \\+ XLA\\s+mixed_bfloat16",
                     "fp32, no XLA/jit\\s+float32"):
            row = re.search(rf"^{backbone}\s+\d+\s+{mode}{number}{number}{number}$", stdout, re.MULTILINE)
            assert row, f"no {mode} row for {backbone}:\n{stdout}"
            assert float(row.group(2)) > 0  # images/s
        assert re.search(rf"^\s+{backbone}\s+\d+\.\d\dx$", stdout, re.MULTILINE)  # mixed vs fp32
    for mode in ("mixed precision \\+ XLA", "features, mixed \\+ XLA", "fp32, no XLA/jit"):
        assert re.search(rf"^  {mode}\s+one GPU, one after another:", stdout, re.MULTILINE), mode
    assert re.search(rf"one GPU, one after another:\s+\d+\.\d min .* {len(backbones)} GPUs in parallel:\s+\d+\.\d min",
                     stdout)


def test_the_gpu_benchmark_imports_keras_on_jax_and_no_tensorflow():
    """The GPU machine has JAX and no TensorFlow: nothing the script imports may pull TensorFlow in."""
    imported = subprocess.run(
        [sys.executable, "-c", "import runpy, sys; runpy.run_path('benchmarks/gpu_throughput.py', run_name='x'); "
         "print(sorted({m.split('.')[0] for m in sys.modules}))"],
        cwd=ROOT, env=_jax_environment(), capture_output=True, text=True, check=True).stdout
    assert "'keras'" in imported and "'jax'" in imported and "'tensorflow'" not in imported


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_gpu_throughput_features_mode_runs_the_keras_hub_backbones():
    """The frozen regime's extraction of DINOv2 and MedSigLIP (full-size architectures at 28 px), so that the first
    GPU run measures them; about 2 minutes on 2 loaded cores."""
    # Not quick_xla: the full-size transformers' forward passes, not their compilation, are most of this run.
    stdout = _smoke("--backbones", *settings.HUB_PRESETS, "--modes", "features", quick_xla={}, timeout=1100)
    for backbone in settings.HUB_PRESETS:
        assert re.search(rf"^{backbone}\s+28 features, mixed \+ XLA\s+\S+\s+\d+\.\d+\s+(\d+\.\d+)", stdout, re.M)


# Every mode and the projection on MobileNet; the other four backbones in the mode a GPU run is for, in a test of
# their own so that the two share out over the test workers. Each mode compiles the backbone anew on JAX, most of
# a smoke run's time on a CPU; what differs between the modes (the policy, jit) is the same code for every
# backbone. The limits are generous: the all-five, all-modes smoke took 5 minutes on 2 idle cores and 25 on 2 cores
# shared with five other processes.
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_gpu_throughput_smoke_prints_a_number_per_mode_and_the_projection(quick_xla):
    _assert_a_row_per_mode_and_the_projection(_smoke("--backbones", "MobileNet", quick_xla=quick_xla, timeout=1100),
                                              ["MobileNet"])


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_gpu_throughput_smoke_prints_a_number_per_backbone(quick_xla):
    others = [name for name in settings.BACKBONES if name != "MobileNet"]
    stdout = _smoke("--backbones", *others, "--modes", "mixed", quick_xla=quick_xla, timeout=1100)
    for backbone in others:
        number = r"\s+(\d+\.\d+)"
        row = re.search(rf"^{backbone}\s+\d+\s+mixed precision \+ XLA\s+mixed_bfloat16{number}{number}{number}$",
                        stdout, re.MULTILINE)
        assert row and float(row.group(2)) > 0, f"no mixed-precision row for {backbone}:\n{stdout}"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_concurrent_mode_times_trainings_at_once_and_one_after_another(quick_xla):
    stdout = _smoke("--concurrent", "--backbones", "MobileNet", "VGG16", quick_xla=quick_xla, timeout=850)
    for backbone in ("MobileNet", "VGG16"):  # images/s alone, and sharing
        assert re.search(rf"^{backbone}\s+\d+\.\d+\s+\d+\.\d+$", stdout, re.MULTILINE), stdout
    assert re.search(r"one after another:\s+\d+\.\d s", stdout)
    assert re.search(r"all at once\s+:\s+\d+\.\d s until all are done: \d+\.\d\dx", stdout)


@pytest.mark.parametrize("option, value, expected", [
    ("--feature-batch-size", "0", "0 is below 1"),
    ("--warmup", "-1", "-1 is below 0"),
    ("--batch-size", "lots", "'lots' is not a whole number"),
])
def test_an_absurd_count_is_one_line_before_any_measurement(option, value, expected):
    # Before: a batch of 0 films or 0 steps measured 0 images/s and ended in a ZeroDivisionError traceback.
    result = subprocess.run([sys.executable, "benchmarks/gpu_throughput.py", option, value], cwd=ROOT,
                            env=_jax_environment(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"gpu_throughput.py: error: argument {option}: {expected}"
