"""The local demo's progress view: everything kfp.local prints goes to a log file; the screen gets one line per task
as it starts and as it ends (task, backbone · regime, seconds, ok or failed), the trainings' epoch lines, every
`... error: ...` line, a size raised to a backbone's minimum, and a failed task's last lines.

How kfp.local 2.17 prints (kfp/local/task_dispatcher.py, subprocess_task_handler.py, logging_utils.py): each task
is a subprocess whose stdout and stderr, merged, are printed line by line with `print` from the thread that runs
the task; that thread also logs `Executing task 'NAME'` and `Task 'NAME' finished with status SUCCESS|FAILURE`
through the root logger to sys.stdout. A ParallelFor runs its iterations on a thread pool, each iteration's tasks
one after another on one thread. So the stream is told apart by thread, and a loop iteration's label comes from the
first line of its train task (cxr.training.supervise prints `train: MobileNet · finetune, seed 42: attempt 1 of 3`)
and carries over to its evaluate and explain tasks on the same thread.
"""

from __future__ import annotations

import builtins
import io
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

ANSI = re.compile(r"\x1b\[[0-9;]*m")
STARTED = re.compile(r"Executing task '(?P<task>[^']+)'")
FINISHED = re.compile(r"Task '(?P<task>[^']+)' finished with status (?P<status>SUCCESS|FAILURE)")
TRAINING = re.compile(r"^train: (?P<label>\S+ · \S+), seed \d+: attempt")
EPOCH = re.compile(r"^epoch \d+/\d+: ")
# Shown as they come: the project's one-line errors, and a backbone's input size raised to its minimum
# (cxr.training.backbones.input_size).
NOTICE = re.compile(r"^[\w ]+: error: |: --image-size \d+ raised to ")
LABELLED_TASK = "train"  # its first line names the training; evaluate and explain follow it on its thread
TAIL_LINES = 15  # a failed task's last lines shown on the screen


def short_task(name: str) -> str:
    """The pipeline's display name of kfp's task name: `train-backbone` is `train`, `plan-trainings` is `plan`."""
    return name.split("-")[0]


@dataclass
class Task:
    """One task as it runs: its display name, when it started, its label once known, its last lines."""

    name: str
    started: float
    label: str = ""
    announced: bool = False
    finished: bool = False
    tail: deque = field(default_factory=lambda: deque(maxlen=TAIL_LINES))


class ProgressView(io.TextIOBase):
    """A text stream to stand in for sys.stdout and sys.stderr while kfp.local runs: everything written is appended
    to `log`, and the lines a person needs are written to `screen`."""

    def __init__(self, screen: TextIO, log: TextIO):
        self.screen, self.log = screen, log
        self.failed: list[Task] = []
        self._lock = threading.RLock()
        self._partial: dict[int, str] = {}  # per thread: text written since its last newline
        self._tasks: dict[int, Task] = {}  # per thread: the task it runs (or ran last)

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            self.log.write(text)
            thread = threading.get_ident()
            *lines, self._partial[thread] = (self._partial.get(thread, "") + text).split("\n")
            for line in lines:
                self._line(thread, ANSI.sub("", line).strip())
        return len(text)

    def flush(self) -> None:
        with self._lock:
            self.log.flush()
            self.screen.flush()

    def _show(self, task: Task | None, text: str) -> None:
        name, label = (task.name, task.label) if task else ("", "")
        self.screen.write(f"  {time.strftime('%H:%M:%S')}  {name:<10} {label:<26} {text}\n")
        self.screen.flush()

    def _announce(self, task: Task) -> None:
        if not task.announced:
            task.announced = True
            self._show(task, "started")

    def _line(self, thread: int, line: str) -> None:
        task = self._tasks.get(thread)
        if started := STARTED.search(line):
            name = short_task(started["task"])
            if task and task.name == name and not task.finished:
                return  # the same line again, through two of kfp's handlers at once
            # evaluate and explain carry their iteration's label; a new training waits for its own
            label = task.label if task and name != LABELLED_TASK else ""
            self._tasks[thread] = Task(name, time.monotonic(), label)
            if name != LABELLED_TASK:
                self._announce(self._tasks[thread])
        elif finished := FINISHED.search(line):
            if task is None or task.finished:
                return
            task.finished = True
            self._announce(task)
            ok = finished["status"] == "SUCCESS"
            self._show(task, f"{'ok' if ok else 'FAILED':<7} {time.monotonic() - task.started:5.0f} s")
            if not ok:
                self.failed.append(task)
                self.screen.write("".join(f"      | {tail}\n" for tail in task.tail))
        elif task is not None and line:
            task.tail.append(line)
            if training := TRAINING.match(line):
                task.label = training["label"]
                self._announce(task)
            elif EPOCH.match(line) or NOTICE.search(line):
                self._announce(task)
                self._show(task, line)


@contextmanager
def progress_view(log_path: Path, screen: TextIO) -> Iterator[ProgressView]:
    """Run the body with sys.stdout and sys.stderr going to a ProgressView that appends to `log_path`."""
    root = logging.getLogger()
    saved_print, saved_handlers, saved_level = builtins.print, root.handlers[:], root.level
    with log_path.open("a", encoding="utf-8") as log:
        view = ProgressView(screen, log)
        # kfp.local sets the root logger's handlers and level for every task and puts back what it found, from
        # several threads at once: a task that ends first leaves the other with the handlers and the level found
        # before it. With only a handler on this view, at INFO, to be found, every task's lines still arrive here.
        root.handlers[:] = [logging.StreamHandler(view)]
        root.setLevel(logging.INFO)
        try:
            with redirect_stdout(view), redirect_stderr(view):
                yield view
        finally:
            # builtins.print, which kfp.local swaps for every task the same way, is put back too
            builtins.print = saved_print
            root.handlers[:] = saved_handlers
            root.setLevel(saved_level)
