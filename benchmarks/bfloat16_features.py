"""Frozen feature extraction in bfloat16 against float32 on this CPU, in one run: films/s of each backbone in both
precisions, and the linear probe's validation and test ROC AUC on each precision's features.

    python benchmarks/bfloat16_features.py --data PROCESSED [--backbones MobileNet,...] [--image-size 0]
                                           [--batch-size 32]

Both precisions run the same backbone (the same weights, copied) on the same batches, interleaved batch by batch,
so that both arms see the same load on a shared machine; the first batch of each arm (tracing) is not timed. The
ratio printed is bfloat16 films/s over float32 films/s. With `--weights none` backbones (random weights: no
download here) the AUCs say whether bfloat16 changes what a probe learns from the same features, not how good the
features are.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from cxr import settings  # noqa: E402
from cxr.data.reader import read_split  # noqa: E402
from cxr.training.backbones import get_backbone, input_size  # noqa: E402
from cxr.training.heads import pool  # noqa: E402
from cxr.training.model import build_model, feature_extractor  # noqa: E402
from cxr.training.probes import fit_linear  # noqa: E402

PRECISIONS = ("float32", "mixed_bfloat16")


def extractors(name: str, size: int) -> dict[str, keras.Model]:
    """The backbone's feature extractor in each precision, with the same (random) weights."""
    built = {}
    for policy in PRECISIONS:
        keras.mixed_precision.set_global_policy(policy)
        keras.utils.set_random_seed(settings.SEED)
        built[policy] = build_model(get_backbone(name), size, weights="none", train_backbone=False)
    built["mixed_bfloat16"].set_weights(built["float32"].get_weights())
    keras.mixed_precision.set_global_policy("float32")
    return {policy: feature_extractor(model) for policy, model in built.items()}


def measure(data: Path, name: str, size: int, batch_size: int) -> dict:
    """Films/s per precision (interleaved batches) and the pooled features of every split."""
    models = extractors(name, size)
    seconds, films = dict.fromkeys(PRECISIONS, 0.0), 0
    features = {p: {} for p in PRECISIONS}
    labels = {}
    for split in settings.SPLITS:
        chunks, split_labels = {p: [] for p in PRECISIONS}, []
        for index, batch in enumerate(read_split(data, split, size, batch_size)):
            images, batch_labels = batch
            for policy in PRECISIONS:
                started = time.perf_counter()
                values = np.asarray(models[policy].predict_on_batch(images.numpy()), dtype="float32")
                if index or split != "train":  # the first batch traces the graph
                    seconds[policy] += time.perf_counter() - started
                chunks[policy].append(values)
            if index or split != "train":
                films += len(batch_labels)
            split_labels.append(batch_labels.numpy().reshape(-1))
        labels[split] = np.concatenate(split_labels).astype(int)
        for policy in PRECISIONS:
            features[policy][split] = pool(np.concatenate(chunks[policy]))
    aucs = {}
    for policy in PRECISIONS:
        f = features[policy]
        probe = fit_linear(f["train"], labels["train"], f["val"], labels["val"])
        kernel, bias = probe.weights
        aucs[policy] = {split: float(roc_auc_score(labels[split], f[split] @ kernel[:, 0] + bias[0]))
                        for split in ("val", "test")}
    return {"films_per_second": {p: films / seconds[p] for p in PRECISIONS}, "auc": aucs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a folder `cxr preprocess` wrote")
    parser.add_argument("--backbones", default=",".join(settings.BACKBONES))
    parser.add_argument("--image-size", type=int, default=0, help="0: each backbone's native size")
    parser.add_argument("--batch-size", type=int, default=settings.BATCH_SIZE)
    args = parser.parse_args()
    print(f"{'backbone':<12} {'px':>4} {'float32 films/s':>16} {'bfloat16 films/s':>17} {'ratio':>6} "
          f"{'val AUC f32/bf16':>18} {'test AUC f32/bf16':>18} {'test AUC moved':>15}")
    for name in args.backbones.split(","):
        size = input_size(get_backbone(name), args.image_size)
        result = measure(args.data, name, size, args.batch_size)
        speed, auc = result["films_per_second"], result["auc"]
        f32, bf16 = auc["float32"], auc["mixed_bfloat16"]
        print(f"{name:<12} {size:>4} {speed['float32']:>16.1f} {speed['mixed_bfloat16']:>17.1f} "
              f"{speed['mixed_bfloat16'] / speed['float32']:>6.2f} {f32['val']:>8.4f}/{bf16['val']:.4f} "
              f"{f32['test']:>8.4f}/{bf16['test']:.4f} {abs(f32['test'] - bf16['test']):>15.4f}", flush=True)


if __name__ == "__main__":
    main()
