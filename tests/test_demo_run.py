"""The whole demo, as a user runs it, at its smallest (one backbone, one regime, one epoch): what the screen shows,
the short paths it prints and the log it names. Slow tier: a real kfp.local run of every step."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_demo_prints_a_progress_report_and_short_paths_to_what_it_wrote(tmp_path):
    # Names typed as a user might: another letter case, blanks around them; the screen spells them as the registry.
    run = subprocess.run([sys.executable, "-m", "pipelines.local_demo", "--out", "runs/demo",
                          "--backbones", " mobilenet ", "--regimes", "FROZEN", "--per-class", "24", "--epochs", "1"],
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                         timeout=1100)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    shown = run.stdout.splitlines()
    words = [line.split() for line in shown]
    for task in ("plan", "ingest", "preprocess", "aggregate", "verdict"):
        assert sum(task in line and "ok" in line for line in words) == 1, task
    for task in ("train", "evaluate", "explain"):
        assert sum(line[1:6] == [task, "MobileNet", "·", "frozen", "ok"] for line in words) == 1, task
    assert sum("epoch" in line and "1/1:" in line for line in words) == 1
    # The runner's chatter is in the log, not on the screen; the screen is a page, not a scroll.
    assert not any("executor_input" in line or "Executing task" in line or "oneDNN" in line for line in shown)
    assert len(shown) < 40
    log = (tmp_path / "runs/demo/demo.log").read_text()
    assert "Executing task" in log and "executor_input" in log
    # The leaderboard: integers for counts, nothing where a row has no value (the ensemble trains nothing).
    assert not any(word in {"NaN", "nan", "<NA>"} for line in words for word in line)
    for name in ("report/report.html", "report/leaderboard.md", "demo.log"):
        assert any(line.split()[-1] == f"runs/demo/{name}" for line in shown if line.split()), name
        assert (tmp_path / "runs/demo" / name).is_file(), name
    assert list((tmp_path / "runs/demo/report").glob("*.png"))
