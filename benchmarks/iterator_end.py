"""How long the end of a training's input stream takes: seconds to destroy the iterator of the stream `cxr train`
reads (cxr.data.reader.read_epochs, autotuning off) against the same stream with tf.data's autotuning on, after
reading it for a while, with several readers at once on a busy CPU, as two trainings share a laptop in the demo.

    python benchmarks/iterator_end.py [--seconds 45] [--readers 3] [--rounds 3]

Each round starts `--readers` processes at once, alternating the two ways, each reading the stream through a
small matrix product per batch for `--seconds`, then destroying its iterator. Prints every process's wait and
images/s, and each way's worst wait and mean images/s. The wait is a race (docs/performance.md, "A training that
waited at its end"): how often it is lost depends on the load, so a round may show none.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WAYS = ("autotuning off (cxr)", "autotuning on")


def read(processed: Path, seconds: float, autotuning: bool) -> dict:
    """Read the training stream for `seconds`, then destroy its iterator: the seconds that took, and images/s."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    from cxr.data.reader import read_epochs

    stream = read_epochs(processed, "train", 32, 16, seed=0)
    if autotuning:
        options = tf.data.Options()
        options.autotune.enabled = True
        stream = stream.with_options(options)

    @tf.function
    def step(films: tf.Tensor) -> tf.Tensor:
        flat = tf.reshape(tf.cast(films, tf.float32), [tf.shape(films)[0], -1])
        return tf.reduce_sum(tf.matmul(flat, flat, transpose_b=True))

    iterator, images, started = iter(stream), 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        films, _ = next(iterator)
        step(films)
        images += int(films.shape[0])
    reading = time.perf_counter() - started
    started = time.perf_counter()
    del iterator
    return {"wait": time.perf_counter() - started, "images_per_second": images / reading}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=45, help="reading before the iterator is destroyed")
    parser.add_argument("--readers", type=int, default=3, help="processes reading at once")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("PROCESSED", "WAY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.seconds <= 0 or args.readers < 1 or args.rounds < 1:
        parser.error("--seconds must be above 0, --readers and --rounds at least 1")
    if args.child:
        print(json.dumps(read(Path(args.child[0]), args.seconds, args.child[1] == WAYS[1])))
        return

    from cxr.data.ingest import ingest
    from cxr.data.preprocess import Settings, preprocess
    from cxr.data.synth import synthesize

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        synthesize(work / "synthetic", per_class=60, min_size=128, max_size=256)
        ingest(str(work / "synthetic"), work / "raw")
        preprocess(work / "raw", work / "processed", Settings(image_size=64))
        results: dict[str, list[dict]] = {way: [] for way in WAYS}
        for round_ in range(args.rounds):
            ways = [WAYS[(round_ + i) % 2] for i in range(args.readers)]
            children = [subprocess.Popen([sys.executable, __file__, "--seconds", str(args.seconds), "--child",
                                          str(work / "processed"), way], stdout=subprocess.PIPE, text=True)
                        for way in ways]
            for way, child in zip(ways, children, strict=True):
                result = json.loads(child.communicate()[0].strip().splitlines()[-1])
                results[way].append(result)
                print(f"round {round_ + 1}  {way:<21} iterator destroyed in {result['wait']:6.2f} s  "
                      f"({result['images_per_second']:.0f} images/s)", flush=True)
    print(f"\n{args.readers} readers at once, {args.seconds:.0f} s of reading each, {args.rounds} rounds:")
    for way, runs in [(way, runs) for way, runs in results.items() if runs]:  # one reader, one round: one way
        print(f"  {way:<21} worst wait {max(r['wait'] for r in runs):6.2f} s; "
              f"{statistics.mean(r['images_per_second'] for r in runs):.0f} images/s")


if __name__ == "__main__":
    main()
