"""Training images per second of the project's own model, per backbone at its native size, on whichever Keras
backend KERAS_BACKEND names: fp32 without compilation against mixed precision with XLA, and the study time that
projects to against the seed's 226 minutes; and the frozen regime's feature extraction (films/s of the backbone's
forward pass, mixed precision with XLA), projected to one pass over the archive's films.

    KERAS_BACKEND=jax python benchmarks/gpu_throughput.py              # the table (one GPU: under 8 minutes)
    KERAS_BACKEND=jax python benchmarks/gpu_throughput.py --concurrent # five trainings at once vs one after another
    python benchmarks/gpu_throughput.py --smoke                        # the same code, tiny, on a CPU (CI)

The model, loss and optimizer are those of `cxr train` (cxr.training.model.build_model, binary cross-entropy,
Adam), fed random uint8 films already in memory (the extraction: cxr.training.model.feature_extractor, in batches
of settings.FEATURE_BATCH_SIZE_GPU as `cxr train --regime frozen` runs it on a GPU), so the figure is the
accelerator's alone: no decoding, no input pipeline. Warm-up steps (compilation included) are timed apart;
then a fixed number of steps is timed. Needs only keras and the cxr source tree (no install, no TensorFlow on
JAX): benchmarks/gpu_run.sh runs it on a bare GPU machine. docs/performance.md holds the method and the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the cxr source tree, installed or not

import keras  # noqa: E402
import numpy as np  # noqa: E402

from cxr import settings  # noqa: E402
from cxr.devices import backend, limit_gpu_memory, mixed_precision_policy, visible_gpus  # noqa: E402
from cxr.training.backbones import get_backbone, input_size  # noqa: E402
from cxr.training.model import build_model, feature_extractor  # noqa: E402

# The study the projection is for: the seed's 30 epochs over the 5,216 films of the Kaggle train split
# (docs/decisions.md, "The dataset"), trained one backbone after another in 226 minutes ("The seed study").
STUDY_EPOCHS = settings.EPOCHS
TRAIN_FILMS = 5216
SEED_MINUTES = 226
ARCHIVE_FILMS = 5856  # the frozen regime extracts every split's films once (docs/decisions.md, "The dataset")
# In this order: the study's mode first, the frozen regime's extraction before the slow baseline (the --budget
# may skip the last rows).
MODES = {"mixed": "mixed precision + XLA", "features": "features, mixed + XLA", "fp32": "fp32, no XLA/jit"}


@dataclass
class Result:
    backbone: str
    mode: str
    policy: str
    image_size: int
    batch_size: int
    steps: int
    warmup_seconds: float  # the first steps, compilation included
    images_per_second: float


def measure(name: str, mode: str, image_size: int, batch_size: int, steps: int, warmup: int) -> Result:
    """Train `name`'s classifier (or, mode "features", run its backbone forward) for `warmup` then `steps`
    batches of random films; time the latter."""
    backbone = get_backbone(name)
    size = input_size(backbone, image_size)
    policy = "float32" if mode == "fp32" else mixed_precision_policy()
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy(policy)
    model = build_model(backbone, size, weights="none")
    if mode == "features":
        return _measure_features(model, backbone.name, policy, size, batch_size, steps, warmup)
    model.compile(optimizer=keras.optimizers.Adam(settings.LEARNING_RATE), loss="binary_crossentropy",
                  metrics=[keras.metrics.BinaryAccuracy(name="accuracy")], jit_compile=mode == "mixed")
    rng = np.random.default_rng(0)
    films = rng.integers(0, 256, (max(steps, warmup) * batch_size, size, size, 1), dtype=np.uint8)
    labels = rng.integers(0, 2, len(films)).astype("float32")

    def train(batches: int) -> float:
        started = time.perf_counter()
        model.fit(films[:batches * batch_size], labels[:batches * batch_size], batch_size=batch_size, epochs=1,
                  shuffle=False, verbose=0)
        return time.perf_counter() - started

    warmup_seconds = train(warmup) if warmup else 0.0
    seconds = train(steps)
    return Result(backbone.name, mode, policy, size, batch_size, steps, round(warmup_seconds, 2),
                  round(steps * batch_size / seconds, 4))


def _measure_features(model: keras.Model, name: str, policy: str, size: int, batch_size: int, steps: int,
                      warmup: int) -> Result:
    """The frozen regime's extraction: the backbone in inference mode, compiled, one batch after another."""
    extractor = feature_extractor(model)
    extractor.compile(jit_compile=True)
    films = np.random.default_rng(0).integers(0, 256, (batch_size, size, size, 1), dtype=np.uint8)

    def extract(batches: int) -> float:
        started = time.perf_counter()
        for _ in range(batches):
            np.asarray(extractor.predict_on_batch(films))  # to host memory, as the cache is written
        return time.perf_counter() - started

    warmup_seconds = extract(warmup) if warmup else 0.0
    seconds = extract(steps)
    return Result(name, "features", policy, size, batch_size, steps, round(warmup_seconds, 2),
                  round(steps * batch_size / seconds, 4))


def rate(images_per_second: float) -> str:
    """Tenths on a GPU; thousandths where a CPU smoke run takes a minute per image."""
    return f"{images_per_second:.1f}" if images_per_second >= 10 else f"{images_per_second:.3f}"


def study_minutes(result: Result) -> float:
    """Fine-tuning: the seed's epochs over the train split; features: one pass over every film."""
    films = ARCHIVE_FILMS if result.mode == "features" else STUDY_EPOCHS * TRAIN_FILMS
    return films / result.images_per_second / 60


def print_table(results: list[Result]) -> None:
    print(f"\n{'backbone':<12} {'size':>4} {'mode':<24} {'policy':<15} {'warm-up s':>9} {'images/s':>9} "
          f"{'study min':>9}")
    for r in results:
        print(f"{r.backbone:<12} {r.image_size:>4} {MODES[r.mode]:<24} {r.policy:<15} {r.warmup_seconds:>9.1f} "
              f"{rate(r.images_per_second):>9} {study_minutes(r):>9.1f}")
    by_mode = {mode: {r.backbone: r for r in results if r.mode == mode} for mode in MODES}
    if by_mode["fp32"] and by_mode["mixed"]:
        print("\nmixed precision + XLA against fp32 without XLA/jit:")
        for name, fast in by_mode["mixed"].items():
            if name in by_mode["fp32"]:
                print(f"  {name:<12} {fast.images_per_second / by_mode['fp32'][name].images_per_second:6.2f}x")
    print(f"\nprojected study (per backbone: fine-tuning {STUDY_EPOCHS} epochs x {TRAIN_FILMS:,} films, training "
          f"steps only, no validation; features one pass over {ARCHIVE_FILMS:,} films, the head's seconds not "
          "counted; no compilation):")
    for mode, rows in by_mode.items():
        if rows:
            minutes = [study_minutes(r) for r in rows.values()]
            print(f"  {MODES[mode]:<24} one GPU, one after another: {sum(minutes):8.1f} min "
                  f"({SEED_MINUTES / sum(minutes):6.1f}x the seed's {SEED_MINUTES} min); "
                  f"{len(minutes)} GPUs in parallel: {max(minutes):8.1f} min ({SEED_MINUTES / max(minutes):6.1f}x)")


def run_children(backbones: list[str], args: argparse.Namespace, at_once: bool) -> tuple[float, list[dict]]:
    """Each backbone in its own process (as the pipeline's train tasks), all at once or one after another;
    returns the wall time until the last is done, and their results."""
    command = [sys.executable, __file__, "--modes", "mixed", "--json", "--image-size", str(args.image_size),
               "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    started = time.perf_counter()
    outputs = []
    if at_once:
        children = [subprocess.Popen([*command, "--backbones", name], stdout=subprocess.PIPE, text=True)
                    for name in backbones]
        outputs = [child.communicate()[0] for child in children]
        codes = [child.returncode for child in children]
    else:
        finished = [subprocess.run([*command, "--backbones", name], stdout=subprocess.PIPE, text=True)
                    for name in backbones]
        outputs, codes = [f.stdout for f in finished], [f.returncode for f in finished]
    wall = time.perf_counter() - started
    if any(codes):
        sys.exit(f"a training process failed (exit codes {codes}); its error is above")
    return wall, [json.loads(line) for out in outputs for line in out.splitlines() if line.startswith("{")]


def concurrent(backbones: list[str], args: argparse.Namespace) -> None:
    """Issue 9 part 3: N trainings sharing one GPU against the same N one after another."""
    print(f"{len(backbones)} training processes, mixed precision + XLA, {args.steps} timed steps each; "
          f"GPU memory per process: {os.environ.get('CXR_GPU_MEMORY_FRACTION') or 'on demand'}")
    sequential, alone = run_children(backbones, args, at_once=False)
    together, shared = run_children(backbones, args, at_once=True)
    print(f"\n{'backbone':<12} {'alone images/s':>15} {'sharing images/s':>17}")
    for one, other in zip(alone, shared, strict=True):
        print(f"{one['backbone']:<12} {rate(one['images_per_second']):>15} {rate(other['images_per_second']):>17}")
    print(f"\none after another: {sequential:7.1f} s until all are done (process start and compilation included)")
    print(f"all at once      : {together:7.1f} s until all are done: {sequential / together:.2f}x")


def count(minimum: int):
    """An argparse type: an integer of at least `minimum`, else argparse's one-line usage error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value
    return parse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", nargs="+", default=list(settings.BACKBONES))
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--image-size", type=int, default=0, help="0: each backbone's native size")
    parser.add_argument("--batch-size", type=count(1), default=settings.BATCH_SIZE, help="films per training step")
    parser.add_argument("--feature-batch-size", type=count(1), default=settings.FEATURE_BATCH_SIZE_GPU,
                        help="films per batch of the features mode")
    parser.add_argument("--steps", type=count(1), default=30, help="timed steps, compiled")
    parser.add_argument("--eager-steps", type=count(1), default=5, help="timed steps, not compiled (slower)")
    parser.add_argument("--warmup", type=count(0), default=3, help="steps before timing (compilation); 0: none")
    parser.add_argument("--budget", type=float, default=420,
                        help="seconds after which no new measurement starts (one GPU run stays under 8 minutes)")
    parser.add_argument("--concurrent", action="store_true", help="N processes sharing the GPU vs one by one")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and steps: checks the code on a CPU")
    parser.add_argument("--json", action="store_true", help="one JSON line per result (for --concurrent)")
    args = parser.parse_args()
    if args.smoke:
        # Each backbone at its smallest input (InceptionV3 75 px, Xception 71, the others 32); one step each, its
        # compilation included: on a CPU, compiling (or, not compiled, JAX's per-operation dispatch) is most of it.
        args.image_size, args.batch_size, args.steps, args.eager_steps, args.warmup = 1, 2, 1, 1, 0
        args.feature_batch_size = 2
        # The budget keeps one GPU run short; on a busy CPU it would skip the last backbones, whose code the smoke
        # is there to run.
        args.budget = float("inf")
    backbones = [get_backbone(name).name for name in args.backbones]
    memory = limit_gpu_memory()  # as `cxr train` does, before the backend touches the GPU
    if not args.json:
        print(f"Keras {keras.__version__} on {backend()}; device: {', '.join(visible_gpus()) or 'CPU'}; {memory}")
    if args.concurrent:
        concurrent(backbones, args)
        return
    results, started = [], time.perf_counter()
    for mode in [mode for mode in MODES if mode in args.modes]:
        for name in backbones:
            if time.perf_counter() - started > args.budget:
                print(f"{name} {MODES[mode]}: skipped, past the --budget of {args.budget:.0f} s", flush=True)
                continue
            # fp32 is not compiled: only its first step traces (TensorFlow) or fills JAX's per-operation cache.
            steps, warmup = (args.eager_steps, min(args.warmup, 1)) if mode == "fp32" else (args.steps, args.warmup)
            batch_size = args.feature_batch_size if mode == "features" else args.batch_size
            result = measure(name, mode, args.image_size, batch_size, steps, warmup)
            results.append(result)
            print(json.dumps(asdict(result)) if args.json else
                  f"{name} {MODES[mode]}: {rate(result.images_per_second)} images/s", flush=True)
    if not args.json:
        print_table(results)
        if args.smoke:
            print("\n(--smoke: tiny sizes on this machine; the figures check the code, they measure nothing)")


if __name__ == "__main__":
    main()
