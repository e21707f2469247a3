"""Training in a child process watched by a small parent: how a pipeline's train task survives its training.

A child that dies (killed by the OOM killer or `kill -9`, or crashed) is started again and resumes from its
checkpoint, up to `attempts` starts in all. The starts are counted beside the checkpoint, on the volume that
outlives the pod, so a retried pod counts those before it and the last pod reports the failure instead of dying
too. A deterministic error (a bad setting: exit status 2) is not repeated. When training fails for good, the
outcome says why and the pipeline reports the backbone as missing instead of losing the whole comparison.

    python -m cxr.training.supervise '<json>'    is the child: one `train` call, a bad setting exits 2
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cxr import files
from cxr.errors import UserError
from cxr.failures import Failure, write_failure

if TYPE_CHECKING:  # the parent stays light: TensorFlow is imported by the child alone
    from cxr.training.plan import TrainSettings


@dataclass(frozen=True)
class Outcome:
    metrics: dict | None  # train_metrics.json, when training finished
    failure: str | None  # why it failed for good, in one line


def attempts_file(checkpoint: Path) -> Path:
    """Beside the checkpoint folder, not in it: the folder itself belongs to the training it holds."""
    return checkpoint.with_name(checkpoint.name + ".attempts.json")


def _how_it_ended(returncode: int, last_line: str) -> str:
    if returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (the usual sign of running out of memory)" if name == "SIGKILL" else ""
        return f"the training process was killed by {name}{hint}"
    return last_line or f"the training process exited with status {returncode}"


def _run_child(request: dict) -> tuple[int, str]:
    """Run one training child, passing its output through; return its exit status and last stderr line."""
    child = subprocess.Popen([sys.executable, "-m", "cxr.training.supervise", json.dumps(request)],
                             stderr=subprocess.PIPE, text=True, errors="replace")
    last = ""
    for line in child.stderr:
        sys.stderr.write(line)
        if line.strip():
            last = line.strip()
    return child.wait(), last


def train_supervised(data_dir: Path, out: Path, options: TrainSettings, checkpoint: Path, device: str,
                     attempts: int, features: Path | None = None) -> Outcome:
    """Train in a child process, starting it again after a crash (resuming), `attempts` starts at most. A training
    that fails for good leaves failure.json in `out` (cxr.failures), where the evaluate step passes it on.
    `features`: the frozen regime's feature cache root (train's default when None)."""
    outcome = _supervise(data_dir, out, options, checkpoint, device, attempts, features)
    if outcome.failure:
        write_failure(out, Failure(options.backbone, options.seed, "train", outcome.failure, options.regime,
                                   options.head, options.learning_rate))
    return outcome


def _supervise(data_dir: Path, out: Path, options: TrainSettings, checkpoint: Path, device: str,
               attempts: int, features: Path | None) -> Outcome:
    if attempts < 1:
        raise UserError(f"training attempts must be at least 1, got {attempts}")
    counter = attempts_file(Path(checkpoint))
    counter.parent.mkdir(parents=True, exist_ok=True)
    record = json.loads(counter.read_text()) if counter.is_file() else {"started": 0, "last_failure": None}
    request = {"data_dir": str(data_dir), "out": str(out), "checkpoint": str(checkpoint), "device": device,
               "features": str(features) if features else None, "options": dataclasses.asdict(options)}
    while record["started"] < attempts:
        record["started"] += 1
        counter.write_text(json.dumps(record))
        # Names the training first: the local demo's progress view (pipelines/local_progress.py) reads it.
        print(f"train: {options.backbone} · {options.regime}, seed {options.seed}: attempt {record['started']} of "
              f"{attempts}", file=sys.stderr, flush=True)
        returncode, last_line = _run_child(request)
        if returncode == 0:
            return Outcome(json.loads((Path(out) / files.TRAIN_METRICS).read_text()), None)
        record["last_failure"] = _how_it_ended(returncode, last_line)
        counter.write_text(json.dumps(record))
        if returncode == 2:  # a UserError: the same settings fail the same way again
            return Outcome(None, record["last_failure"])
        print(f"train: {record['last_failure']}", file=sys.stderr, flush=True)
    # No failure seen by a parent: the earlier attempts died with their whole task (pod killed or evicted).
    last = record["last_failure"] or "its task died with it (pod killed, evicted or out of memory)"
    return Outcome(None, f"gave up after {attempts} attempt(s); the last: {last}")


def _child(request_json: str) -> int:
    from cxr.training.plan import TrainSettings
    from cxr.training.train import train

    request = json.loads(request_json)
    try:
        train(Path(request["data_dir"]), Path(request["out"]), TrainSettings(**request["options"]),
              checkpoint=Path(request["checkpoint"]), device=request["device"],
              features=Path(request["features"]) if request.get("features") else None)
    except UserError as error:
        print(f"cxr train: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
