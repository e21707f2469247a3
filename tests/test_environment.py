"""Environment settings cxr reads (KERAS_BACKEND, CXR_*) are checked when a command starts: a value it cannot use
is one line naming the variable and exit 2, as a user running the real command sees it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CXR = str(Path(sys.executable).with_name("cxr"))


def _run(command: list[str], **environment: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, env={**os.environ, **environment}, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize(("variable", "value", "expected"), [
    ("KERAS_BACKEND", "torch", "KERAS_BACKEND=torch: cxr runs on tensorflow or jax"),
    ("KERAS_BACKEND", "nonsense", "KERAS_BACKEND=nonsense: cxr runs on tensorflow or jax"),
    ("CXR_TRAIN_ATTEMPTS", "abc", "CXR_TRAIN_ATTEMPTS='abc': expected a whole number >= 1"),
    ("CXR_TRAIN_ATTEMPTS", "0", "CXR_TRAIN_ATTEMPTS='0': expected a whole number >= 1"),
    ("CXR_PARALLELISM", "2.5", "CXR_PARALLELISM='2.5': expected a whole number >= 1"),
])
def test_an_unusable_environment_setting_is_one_line_naming_it(tmp_path, variable, value, expected):
    result = _run([CXR, "train", "--data", str(tmp_path), "--out", str(tmp_path / "out"), "--backbone", "MobileNet"],
                  **{variable: value})
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [f"cxr train: error: {expected}"]
    assert not (tmp_path / "out").exists()


def test_compiling_the_pipeline_with_an_unusable_parallelism_is_one_line(tmp_path):
    result = _run([sys.executable, "-m", "pipelines.chest_xray_benchmark", "--output", str(tmp_path / "p.yaml")],
                  CXR_PARALLELISM="many")
    assert result.returncode == 1
    expected = "compile: error: CXR_PARALLELISM='many': expected a whole number >= 1"
    assert result.stderr.strip().splitlines()[-1] == expected
    assert not (tmp_path / "p.yaml").exists()
