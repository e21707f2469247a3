"""The demo's progress view, on a real kfp.local run of a small pipeline of lightweight components: two loop
iterations run side by side, one task fails."""

import builtins
import io
import logging

import pytest
from kfp import dsl, local

from pipelines.local_demo import build_parser
from pipelines.local_progress import TAIL_LINES, progress_view


@dsl.component(base_image="python:3.11")
def train_quickly(backbone: str, regime: str) -> str:
    import sys

    print(f"train: {backbone} · {regime}, seed 42: attempt 1 of 3", file=sys.stderr, flush=True)
    print("oneDNN custom operations are on (a banner nobody needs)", flush=True)
    print(f"{backbone}: --image-size 32 raised to its minimum, 75", file=sys.stderr, flush=True)
    print("epoch 1/1: loss 0.6931 acc 0.5000 | val_loss 0.6931 val_acc 0.5000 | 1.0 s, 10 img/s", flush=True)
    return backbone


@dsl.component(base_image="python:3.11")
def evaluate_quietly(model: str) -> str:
    print(f"evaluated {model}")
    return model


@dsl.component(base_image="python:3.11")
def verdict_fails(models: list) -> None:
    for line in range(30):
        print(f"detail line {line}")
    raise SystemExit("verdict: error: a training is missing")


@dsl.pipeline(name="progress-test")
def small_pipeline():
    with dsl.ParallelFor([{"backbone": "InceptionV3", "regime": "frozen"},
                          {"backbone": "MobileNet", "regime": "finetune"}], parallelism=2) as run:
        train = train_quickly(backbone=run.backbone, regime=run.regime)
        evaluate = evaluate_quietly(model=train.output)
    verdict_fails(models=dsl.Collected(evaluate.output))


@pytest.mark.timeout(300)
def test_the_screen_gets_a_line_per_task_and_the_log_gets_everything(tmp_path):
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    screen, log = io.StringIO(), tmp_path / "demo.log"
    print_before, handlers_before = builtins.print, logging.getLogger().handlers[:]
    with progress_view(log, screen) as view, pytest.raises(RuntimeError):
        small_pipeline()
    shown = screen.getvalue().splitlines()
    everything = log.read_text()

    def lines(*words: str) -> list[str]:
        return [line for line in shown if all(word in line.split() for word in words)]

    for label in (["InceptionV3", "·", "frozen"], ["MobileNet", "·", "finetune"]):
        for task in ("train", "evaluate"):
            assert len(lines(task, *label, "started")) == 1 and len(lines(task, *label, "ok", "s")) == 1
        assert len(lines("train", *label, "epoch", "1/1:")) == 1
    assert len(lines("InceptionV3:", "raised", "minimum,", "75")) == 1
    assert len(lines("verdict", "started")) == 1 and len(lines("verdict", "FAILED", "s")) == 1
    # The failed task's last lines, then its error; earlier lines and every other task's chatter stay in the log.
    assert any("detail line 29" in line for line in shown) and not any("detail line 5" in line for line in shown)
    assert any("verdict: error: a training is missing" in line for line in shown)
    assert [task.name for task in view.failed] == ["verdict"]
    assert not any("oneDNN" in line or "evaluated" in line or "Executing task" in line for line in shown)
    assert not any("\x1b[" in line for line in shown)  # kfp's colours are stripped
    for chatter in ("oneDNN custom operations", "evaluated MobileNet", "detail line 5", "Executing task"):
        assert chatter in everything
    # per training: train started, size, epoch, ok, evaluate started, ok; the verdict: started, error, FAILED, tail
    assert len(shown) == 2 * 6 + 3 + TAIL_LINES
    # kfp.local swaps these per task from several threads; the view puts them back
    assert builtins.print is print_before and logging.getLogger().handlers == handlers_before


def test_the_demos_help_gives_every_default_and_says_lists_are_comma_separated():
    text = " ".join(build_parser().format_help().split())
    assert "comma-separated" in text
    assert "(default: InceptionV3,VGG16,MobileNet)" in text and "(default: finetune,frozen)" in text
    assert "(default: 80)" in text and "(default: 4)" in text and "(default: 32)" in text
    assert "--verbose" in text
