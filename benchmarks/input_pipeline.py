"""Images per second the input pipeline delivers to the model, against decoding the raw JPEGs every epoch
(what the seed's flow_from_directory did), in the same process: with the seed's own loader
(keras.utils.image_dataset_from_directory, the Keras 3 successor of flow_from_directory) and with a parallel
tf.data pipeline over the same JPEGs.

    python benchmarks/input_pipeline.py [--per-class 40] [--film-size 1500] [--image-size 224] [--epochs 3]

Synthetic films at the real archive's resolution go through `cxr preprocess`; then both pipelines feed
224-px batches of 32 to nothing, so the ratio is the input pipeline alone. The baseline hands the model float32
three-channel images preprocessed on the host, as the seed did; ours hands it uint8 films, the backbone's
preprocessing being the model's first layer, on the accelerator.
"""

import argparse
import tempfile
import time
from pathlib import Path

import keras
import tensorflow as tf

from cxr.data.ingest import ingest
from cxr.data.preprocess import Settings, preprocess
from cxr.data.reader import batches_per_epoch, read_epochs
from cxr.data.synth import synthesize
from cxr.training.backbones import get_backbone


def raw_jpeg_pipeline(raw: Path, size: int, preprocess_input, batch_size: int) -> tf.data.Dataset:
    """The baseline: list the JPEGs, decode and resize each one every epoch."""
    files = sorted(str(p) for p in (raw / "train").rglob("*.jpeg"))
    labels = [float("PNEUMONIA" in f) for f in files]

    def load(path, label):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=1)
        image = tf.image.resize(image, (size, size))
        return preprocess_input(tf.image.grayscale_to_rgb(image)), label

    return (tf.data.Dataset.from_tensor_slices((files, labels)).shuffle(len(files))
            .map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE))


def seed_loader(raw: Path, size: int, preprocess_input, batch_size: int) -> tf.data.Dataset:
    """The seed's loader: the class folders of the raw JPEGs through Keras' directory reader, decoded, resized
    and preprocessed on the host every epoch."""
    dataset = keras.utils.image_dataset_from_directory(raw / "train", label_mode="binary", color_mode="rgb",
                                                       image_size=(size, size), batch_size=batch_size, verbose=False)
    return dataset.map(lambda images, labels: (preprocess_input(images), labels))


def images_per_second(dataset: tf.data.Dataset, epochs: int) -> list[float]:
    rates = []
    for _ in range(epochs):
        started, count = time.perf_counter(), 0
        for images, _ in dataset:
            count += int(images.shape[0])
        rates.append(count / (time.perf_counter() - started))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--film-size", type=int, default=1500)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    backbone = get_backbone("ResNet50")
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        synthesize(work / "synthetic", per_class=args.per_class, min_size=args.film_size, max_size=args.film_size)
        ingest(str(work / "synthetic"), work / "raw")
        started = time.perf_counter()
        preprocess(work / "raw", work / "processed", Settings(image_size=299))
        print(f"preprocess (once): {time.perf_counter() - started:.1f} s")
        seed = images_per_second(seed_loader(work / "raw", args.image_size, backbone.preprocess_input, 32),
                                 args.epochs)
        baseline = images_per_second(raw_jpeg_pipeline(work / "raw", args.image_size, backbone.preprocess_input, 32),
                                     args.epochs)
        # The training stream's first epoch, as `cxr train` reads it (decoded once, then from the cache).
        epoch = read_epochs(work / "processed", "train", args.image_size, 32, seed=0).take(
            batches_per_epoch(work / "processed", "train", 32))
        ours = images_per_second(epoch, args.epochs)
    print(f"{'epoch':>5} {'seed loader':>16} {'raw JPEG tf.data':>17} {'cached TFRecords':>17} "
          f"{'vs seed':>8} {'vs tf.data':>10}")
    for epoch, (seeds, slow, fast) in enumerate(zip(seed, baseline, ours, strict=True), start=1):
        print(f"{epoch:>5} {seeds:>11.0f} im/s {slow:>12.0f} im/s {fast:>12.0f} im/s {fast / seeds:>7.1f}x "
              f"{fast / slow:>9.1f}x")


if __name__ == "__main__":
    main()
