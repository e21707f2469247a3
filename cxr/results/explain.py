"""Where each backbone looks: Grad-CAM of test films, and the pointing game where lesions are known.

CNNs have scored well on chest films by reading the hospital's markers or the film's borders rather than the
lungs (Zech et al. 2018, PLOS Medicine). Grad-CAM (Selvaraju et al. 2017) weights the channels of the backbone's
last convolutional block by the mean gradient of the pneumonia logit, so a map shows where evidence *for
pneumonia* lies, on every film whatever its prediction. On synthetic data the opacities' boxes are known
(`cxr synth` writes lesions.csv): the pointing game counts a hit when the map's maximum falls inside a box, beside
the rate a uniformly random point would get (the boxes' share of the film).

A vision transformer (DINOv2, MedSigLIP) has no convolutional block: Grad-CAM then weights the channels of its
last block's patch tokens (the backbone's final normed tokens, token 0 left out) reshaped to their grid, the usual
transfer of Grad-CAM to ViTs (docs/backbones.md).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxr import artifacts, files, provenance, settings
from cxr.devices import require_tensorflow
from cxr.errors import UserError
from cxr.outputs import claim, write_atomically
from cxr.results import plots, render

OUTCOMES = ("TP", "FN", "FP", "TN")  # the panel's order: hits and misses on pneumonia first


# --- Grad-CAM ----------------------------------------------------------------------------------------------

def backbone_of(model):
    """The keras.applications backbone nested in our classifier (cxr.training.model): its one Model layer."""
    import keras

    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(nested) != 1:
        raise UserError(f"{model.name}: expected one nested backbone model, found {len(nested)}")
    return nested[0]


def last_conv_layer(backbone):
    """The backbone's last layer with a spatial (4-D) output that is not a pooling layer: the output of its last
    convolutional block (MobileNet conv_pw_13_relu, InceptionV3 mixed10, Xception block14_sepconv2_act,
    ResNet50 conv5_block3_out, VGG16 block5_conv3 before block5_pool)."""
    import keras

    pooling = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)
    for layer in reversed(backbone.layers):
        if len(layer.output.shape) == 4 and not isinstance(layer, pooling):
            return layer
    raise UserError(f"{backbone.name} has no convolutional layer")


def patch_grid(tokens):
    """A ViT's tokens [n, 1 + g*g, c] as their patch grid [n, g, g, c]: token 0 (class or pooled) left out."""
    import tensorflow as tf

    side = math.isqrt(int(tokens.shape[1]) - 1)
    return tf.reshape(tokens[:, 1:, :], (-1, side, side, int(tokens.shape[-1])))


class GradCam:
    """Grad-CAM of the pneumonia logit at the backbone's last convolutional block, or a ViT's last block's patch
    tokens, for our classifier (a chain: input -> preprocessing -> backbone -> head layers -> Dense(1, sigmoid), or
    the kNN probe's NearestNeighbours, whose `evidence` stands for the logit)."""

    def __init__(self, model):
        import keras

        self.backbone = backbone_of(model)
        self.tokens = len(self.backbone.output.shape) == 3
        # A ViT's output is its last block's tokens (after the final norm): the layer that makes them, and the
        # activations are the backbone's output itself.
        self.layer = self.backbone.layers[-1] if self.tokens else last_conv_layer(self.backbone)
        position = model.layers.index(self.backbone)
        self.before = [layer for layer in model.layers[:position] if not isinstance(layer, keras.layers.InputLayer)]
        *self.head, self.output = model.layers[position + 1:]
        outputs = self.backbone.outputs if self.tokens else [self.layer.output, self.backbone.output]
        self.inner = keras.Model(self.backbone.inputs, outputs)

    def __call__(self, films: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(P(pneumonia) [n], maps [n, h, w] in [0, 1] at the block's resolution) for uint8 films [n, s, s, 1]."""
        import tensorflow as tf

        x = tf.convert_to_tensor(films)
        for layer in self.before:
            x = layer(x)
        with tf.GradientTape() as tape:
            if self.tokens:
                activations = features = self.inner(x, training=False)
            else:
                activations, features = self.inner(x, training=False)
            for layer in self.head:
                features = layer(features, training=False)
            if hasattr(self.output, "evidence"):  # the kNN probe: its vote has no gradient
                probabilities, logits = self.output(features), self.output.evidence(features)
            else:  # the logit, not the probability: a confident sigmoid's gradient vanishes
                logits = tf.matmul(features, self.output.kernel) + self.output.bias
                probabilities = tf.sigmoid(logits)
        gradients = tape.gradient(logits, activations)
        if self.tokens:
            activations, gradients = patch_grid(activations), patch_grid(gradients)
        weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
        maps = tf.nn.relu(tf.reduce_sum(weights * activations, axis=-1)).numpy()
        peaks = maps.max(axis=(1, 2), keepdims=True)
        maps = np.divide(maps, peaks, out=np.zeros_like(maps), where=peaks > 0)
        return np.asarray(probabilities).reshape(-1), maps


def upsample(maps: np.ndarray, size: int) -> np.ndarray:
    """Maps [n, h, w] as [n, size, size] float32, bilinear: the heatmap drawn over the film."""
    import tensorflow as tf

    return tf.image.resize(maps[..., None], (size, size), method="bilinear").numpy()[..., 0].astype(np.float32)


def peak_points(maps: np.ndarray, size: int) -> np.ndarray:
    """(x, y) [n, 2] in the pixels of the size x size film: the centre of each map's strongest cell, which is
    where the bilinearly upsampled map peaks. An all-zero map (no evidence for pneumonia) points at the
    top-left cell: a miss, not a skipped film."""
    n, height, width = maps.shape
    rows, columns = np.unravel_index(maps.reshape(n, -1).argmax(axis=1), (height, width))
    return np.stack([(columns + 0.5) * size / width, (rows + 0.5) * size / height], axis=1)


# --- Which films ---------------------------------------------------------------------------------------------

def outcomes(predictions: pd.DataFrame, threshold: float) -> pd.Series:
    """TP, FN, FP or TN of each prediction at `threshold` (P >= threshold is PNEUMONIA, as evaluate counts)."""
    positive = predictions["probability"].to_numpy() >= threshold
    label = predictions["label"].to_numpy().astype(bool)
    return pd.Series(np.select([label & positive, label & ~positive, ~label & positive], ["TP", "FN", "FP"], "TN"),
                     index=predictions.index)


def choose_films(predictions: pd.DataFrame, threshold: float, count: int) -> pd.DataFrame:
    """`count` films taken in turn from TP, FN, FP, TN, the most confident of each first (the clearest hits and
    the worst mistakes), ties by source: the same predictions give the same films. Adds column `outcome`."""
    table = predictions.assign(outcome=outcomes(predictions, threshold))
    ranked = {}
    for outcome in OUTCOMES:
        rows = table[table["outcome"] == outcome]
        # Most confident: highest P for predicted pneumonia (TP, FP), lowest for predicted normal (FN, TN).
        key = -rows["probability"] if outcome in ("TP", "FP") else rows["probability"]
        ranked[outcome] = list(rows.assign(key=key).sort_values(["key", "source"]).index)
    chosen: list[int] = []
    while len(chosen) < count and any(ranked.values()):
        for outcome in OUTCOMES:
            if ranked[outcome] and len(chosen) < count:
                chosen.append(ranked[outcome].pop(0))
    picked = table.loc[chosen]
    return picked.iloc[sorted(range(len(picked)), key=lambda i: OUTCOMES.index(picked["outcome"].iloc[i]))]


def shared_films(predictions: pd.DataFrame, count: int) -> list[str]:
    """`count` test films, half of each class, chosen from the file names alone, so that every backbone
    evaluated on the same test split explains the same ones (the side-by-side comparison)."""
    table = predictions.assign(key=[hashlib.sha256(s.encode()).hexdigest() for s in predictions["source"]])
    chosen = []
    for label, share in ((1, (count + 1) // 2), (0, count // 2)):
        chosen += table[table["label"] == label].sort_values("key")["source"].head(share).tolist()
    return chosen


# --- The pointing game ---------------------------------------------------------------------------------------

def square_boxes(lesions: pd.DataFrame, size: int) -> dict[str, np.ndarray]:
    """Each film's boxes [k, 4] (x_min, y_min, x_max, y_max) in the pixels of the size x size film the model
    sees: the film is stretched to a square (cxr.data.images.decode_resized), so x scales by size / width and
    y by size / height."""
    x_scale, y_scale = size / lesions["width"], size / lesions["height"]
    scaled = np.stack([lesions["x_min"] * x_scale, lesions["y_min"] * y_scale,
                       lesions["x_max"] * x_scale, lesions["y_max"] * y_scale], axis=1)
    return {file: scaled[rows] for file, rows in lesions.groupby("file").indices.items()}


def inside(point: np.ndarray, boxes: np.ndarray) -> bool:
    x, y = point
    return bool(np.any((boxes[:, 0] <= x) & (x <= boxes[:, 2]) & (boxes[:, 1] <= y) & (y <= boxes[:, 3])))


def area_share(boxes: np.ndarray, size: int, samples_per_pixel: int = 4) -> float:
    """The share of the film covered by the union of `boxes`: the chance a uniformly random point hits one."""
    steps = size * samples_per_pixel
    grid = (np.arange(steps) + 0.5) / samples_per_pixel
    covered = np.zeros((steps, steps), bool)
    for x_min, y_min, x_max, y_max in boxes:
        covered |= ((grid >= y_min) & (grid <= y_max))[:, None] & ((grid >= x_min) & (grid <= x_max))[None, :]
    return float(covered.mean())


def pointing_game(points: np.ndarray, boxes: Sequence[np.ndarray], size: int) -> dict[str, float]:
    """Hit rate of `points` (one per film) in their film's boxes, and the rate of a uniformly random point."""
    hits = [inside(point, film_boxes) for point, film_boxes in zip(points, boxes, strict=True)]
    return {"films": len(hits), "hits": int(sum(hits)), "hit_rate": float(np.mean(hits)) if hits else float("nan"),
            "random_rate": float(np.mean([area_share(b, size) for b in boxes])) if hits else float("nan")}


# --- The command ---------------------------------------------------------------------------------------------

def explain(data_dir: Path, model_dir: Path, result_dir: Path | None, out: Path,
            films: int = settings.EXPLAIN_FILMS, lesions: Path | None = None,
            batch_size: int = settings.BATCH_SIZE) -> dict:
    """Grad-CAM of `films` test films chosen from result_dir's predictions (default model_dir: train and evaluate
    sharing a folder), and of `films` films shared by every backbone; with `lesions`, the pointing game on every
    test film that has boxes. Writes <Backbone>_gradcam.png, .npy (heatmaps [n, size, size]), .csv (their
    films, in the .npy's order), <Backbone>_films.npy (the films) and explain.json into `out`; returns the summary.
    Every input is checked before `out` is claimed, so a corrected rerun into the same `out` is not refused. A
    rerun with the same inputs on a finished `out` reuses it."""
    data_dir, model_dir, out = Path(data_dir), Path(model_dir), Path(out)
    result_dir = Path(result_dir) if result_dir is not None else model_dir
    if films < 1:
        raise UserError(f"--films must be at least 1, got {films}")
    require_tensorflow("explain", "Grad-CAM takes its gradients with tf.GradientTape")
    inputs = {"model": str(model_dir.resolve()), "result": str(result_dir.resolve()), "films": films,
              "lesions": str(Path(lesions).resolve()) if lesions is not None else None}
    checked = _checked_inputs(data_dir, model_dir, result_dir, lesions)
    with claim(out, "explain", inputs) as output:
        if output.finished and (out / files.EXPLAIN_SUMMARY).is_file():
            print(f"explain: {out} already holds this explanation; reusing it", file=sys.stderr)
            return artifacts.read_explain_summary(out / files.EXPLAIN_SUMMARY)
        summary = _explain(data_dir, model_dir, result_dir, out, films, lesions, batch_size, **checked)
        output.finish()
    return summary


def _checked_inputs(data_dir: Path, model_dir: Path, result_dir: Path, lesions: Path | None) -> dict:
    """Everything explain reads but the films, checked: the result's predictions and threshold (of this model's
    evaluation), the data (the one the result was evaluated on, at the model's stored size), the lesions."""
    from cxr.serving.trained import find_threshold

    if not (result_dir / files.PREDICTIONS).is_file():
        raise UserError(f"missing {result_dir / files.PREDICTIONS}: pass --result (the --out folder of "
                        "`cxr evaluate`)")
    # Any test split will do: the panel takes what each outcome has.
    predictions = artifacts.read_predictions(result_dir / files.PREDICTIONS, both_classes=False)
    threshold = find_threshold(model_dir, result_dir)  # refuses another model's evaluation
    provenance.check_stored_size(model_dir, data_dir)
    provenance.check_same_data(data_dir, provenance.evaluated_data(result_dir),
                               f"--result {result_dir} was evaluated on")
    table = artifacts.read_lesions(lesions) if lesions is not None else None
    if table is not None and not set(table["file"]) & set(predictions["source"]):
        raise UserError(f"--lesions {lesions}: no box for any test film of {result_dir / files.PREDICTIONS} "
                        "(its `file` column must match the predictions' `source`)")
    return {"predictions": predictions, "threshold": threshold, "lesion_table": table}


def _explain(data_dir: Path, model_dir: Path, result_dir: Path, out: Path, films: int, lesions: Path | None,
             batch_size: int, predictions: pd.DataFrame, threshold: float,
             lesion_table: pd.DataFrame | None) -> dict:
    from cxr.data.reader import read_split
    from cxr.serving.trained import backbone_name, load_model

    backbone = backbone_name(model_dir)
    model = load_model(model_dir)
    size = int(model.input_shape[1])
    boxes = square_boxes(lesion_table, size) if lesion_table is not None else {}

    panel = choose_films(predictions, threshold, films)
    shared = shared_films(predictions, films)
    wanted = set(panel["source"]) | set(shared) | (set(boxes) & set(predictions["source"]))
    grad_cam = GradCam(model)
    found: dict[str, tuple[np.ndarray, float, np.ndarray]] = {}  # source -> (film, P, map at block resolution)
    for batch in read_split(data_dir, "test", size, batch_size, with_metadata=True):
        sources = [s.decode() for s in batch["source"].numpy()]
        keep = [i for i, source in enumerate(sources) if source in wanted]
        if keep:
            images = batch["image"].numpy()[keep]
            probabilities, maps = grad_cam(images)
            for index, image, probability, cam in zip(keep, images, probabilities, maps, strict=True):
                found[sources[index]] = (image[..., 0], float(probability), cam)
    missing = wanted - set(found)
    if missing:
        raise UserError(f"{len(missing)} film(s) of {result_dir / files.PREDICTIONS} are not in the test split of "
                        f"{data_dir}, e.g. {sorted(missing)[0]}: --data must be the data the model was evaluated on")

    order = list(dict.fromkeys([*panel["source"], *shared]))
    table = predictions.set_index("source").loc[order].reset_index()
    table["outcome"] = outcomes(table, threshold)
    table["probability"] = [found[s][1] for s in order]  # Grad-CAM's own forward pass: the same as evaluate's
    table["in_panel"] = table["source"].isin(panel["source"])
    table["shared"] = table["source"].isin(shared)
    maps = np.stack([found[s][2] for s in order])
    points = peak_points(maps, size)
    table["point_x"], table["point_y"] = points[:, 0], points[:, 1]
    table["hit"] = [inside(p, boxes[s]) if s in boxes else None for p, s in zip(points, order, strict=True)]
    heatmaps = upsample(maps, size)

    pixels = np.stack([found[s][0] for s in order])
    np.save(out / files.gradcam_heatmaps(backbone), heatmaps)
    np.save(out / files.explained_films(backbone), pixels)
    table[list(artifacts.GRADCAM_FILM_COLUMNS)].to_csv(out / files.gradcam_films(backbone), index=False)
    in_panel = table["in_panel"].to_numpy()
    plots.gradcam_panel(backbone, pixels[in_panel], heatmaps[in_panel], table[in_panel], boxes,
                        out / files.gradcam_panel(backbone))
    summary = {"backbone": backbone, "layer": grad_cam.layer.name, "grid": list(maps.shape[1:]),
               "image_size": size, "threshold": threshold,
               "films": table.loc[in_panel, ["source", "outcome", "probability"]].to_dict("records"),
               "shared_films": shared,
               "provenance": provenance.explanation_record(model_dir, result_dir, data_dir)}
    if boxes:
        annotated = [s for s in boxes if s in found]
        annotated_maps = np.stack([found[s][2] for s in annotated])
        annotated_points = peak_points(annotated_maps, size)
        summary["pointing_game"] = {
            **pointing_game(annotated_points, [boxes[s] for s in annotated], size),
            "empty_heatmaps": int((annotated_maps.max(axis=(1, 2)) == 0).sum()),
            "lesions": str(lesions)}
    write_atomically(out / files.EXPLAIN_SUMMARY, json.dumps(summary, indent=2))
    return summary


def compare_backbones(explain_dirs: Sequence[Path], out: Path) -> Path | None:
    """One figure: the films every backbone explained in common (the shared films), one row each, with each
    backbone's heatmap side by side. Returns its path, or None when the folders share no film."""
    explained = [artifacts.read_explanation(folder) for folder in explain_dirs]
    runs = [(e.backbone, e.films.set_index("source"), e.heatmaps, e.pixels) for e in explained]
    common = [s for s in runs[0][1].index[runs[0][1]["shared"]] if all(s in t.index for _, t, _, _ in runs)]
    if not common:
        return None
    plots.gradcam_comparison(runs, common, Path(out))
    return Path(out)


def find_lesions(source: str) -> Path | None:
    """lesions.csv of a dataset source when it is a local folder `cxr synth` wrote (SOURCE/chest_xray/ or
    SOURCE itself), else None: real data carries no boxes, and explain then skips the pointing game."""
    folder = Path(source)
    for candidate in (folder / files.LESIONS, folder / "chest_xray" / files.LESIONS):
        if candidate.is_file():
            return candidate
    return None


def explanations_html(explain_dirs: Sequence[Path], out: Path) -> str:
    """The report's section on where each backbone looks: the pointing game per backbone (when lesions were
    known), the shared films side by side (written to out/gradcam_comparison.png) and each backbone's panel,
    images embedded so that the page stands alone (the KFP UI shows one file)."""
    summaries = [artifacts.read_explanation(d).summary for d in explain_dirs]
    Path(out).mkdir(parents=True, exist_ok=True)
    comparison = compare_backbones(explain_dirs, Path(out) / files.GRADCAM_COMPARISON)
    panels = [Path(d) / files.gradcam_panel(s["backbone"]) for d, s in zip(explain_dirs, summaries, strict=True)]
    return render.explanations_section(summaries, comparison, panels)


def explain_result(data_dir: Path, model_dir: Path, result_dir: Path, out: Path, films: int,
                   source: str) -> dict | None:
    """What a pipeline's explain step does: `explain` with the source's lesions when it has them, or None (an
    empty `out`) for a training that failed, whose result holds failure.json: the report names it already."""
    if artifacts.read_failure(result_dir) is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        return None
    return explain(data_dir, model_dir, result_dir, out, films=films, lesions=find_lesions(source))
