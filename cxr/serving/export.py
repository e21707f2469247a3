"""`cxr export`: a TensorFlow SavedModel that serves encoded films, for TF Serving and KServe.

The signature `serving_default` takes `image_bytes`, a batch of JPEG or PNG files as strings (in TF Serving's
REST API: `{"instances": [{"b64": "..."}]}`), and returns `probability` (P(pneumonia), float32) and `decision`
(NORMAL or PNEUMONIA at the validation threshold, baked in). Decoding, grayscale and both resizes run inside the
graph: JPEGs decode to PIL's pixels (same DCT scale, same IDCT), PIL's resize is repeated to within a grey level
on a few pixels, then comes the reader's own resize (cxr.data.reader.resize_film). Probabilities agree with
`cxr predict` closely, not exactly.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from cxr import artifacts, files, provenance, settings
from cxr.errors import UserError
from cxr.outputs import claim
from cxr.serving.trained import Preprocessing, find_threshold, load_model, read_preprocessing

# TF Serving (also KServe's tensorflow predictor) decodes {"b64": ...} for any string input; Vertex AI only for
# inputs whose name ends in `_bytes`: this name works with all three.
INPUT_NAME = "image_bytes"
VERSION = "1"  # TF Serving loads numbered versions under the model's base path


def _grayscale_uint8(data, size: int):
    """Encoded bytes -> uint8 [h, w, 1] as cxr.data.images.decode_resized decodes them before its resize: a JPEG
    at the DCT scale PIL's draft picks for `size` with libjpeg's accurate IDCT (PIL's; TensorFlow's default is
    the fast one, a grey level off), a 16-bit PNG's used range stretched to 0-255 (TensorFlow's own conversion
    would keep it nearly black)."""
    import tensorflow as tf

    def starts_with(magic: bytes):
        return tf.equal(tf.strings.substr(data, 0, len(magic)), magic)

    def jpeg():
        height_width = tf.io.extract_jpeg_shape(data)[:2]
        scale = tf.reduce_min(height_width // size)  # PIL: the largest of 8, 4, 2, 1 that keeps >= size
        index = tf.add_n([tf.cast(scale >= ratio, tf.int32) for ratio in (2, 4, 8)])
        return tf.switch_case(index, [
            lambda ratio=ratio: tf.io.decode_jpeg(data, channels=1, ratio=ratio, dct_method="INTEGER_ACCURATE")
            for ratio in (1, 2, 4, 8)])

    def png16():
        pixels = tf.cast(tf.io.decode_png(data, channels=1, dtype=tf.uint16), tf.float32)
        low, high = tf.reduce_min(pixels), tf.reduce_max(pixels)
        return tf.cast(tf.round(tf.math.divide_no_nan((pixels - low) * 255.0, high - low)), tf.uint8)

    def other():
        return tf.io.decode_image(data, channels=1, dtype=tf.uint8, expand_animations=False)

    is_png16 = tf.logical_and(starts_with(b"\x89PNG\r\n\x1a\n"), tf.equal(tf.strings.substr(data, 24, 1), b"\x10"))
    image = tf.case([(starts_with(b"\xff\xd8\xff"), jpeg), (is_png16, png16)], default=other, exclusive=True)
    image.set_shape([None, None, 1])
    return image


def _pil_bilinear(image, size: int):
    """PIL's BILINEAR resize (cxr.data.images.decode_resized) in TensorFlow ops: PIL filters rows, rounds to
    8 bits, then filters columns; both use the antialiasing triangle filter. Measured: the same pixels but for
    0.1-1 % of them, one grey level off (PIL's fixed-point weights). PIL's box `reducing_gap` pre-shrink, which
    only a film still 4x the size after the JPEG DCT scale would take, is not repeated."""
    import tensorflow as tf

    rows = tf.image.resize(image, (tf.shape(image)[0], size), method="bilinear", antialias=True)
    rows = tf.cast(tf.round(tf.clip_by_value(rows, 0, 255)), tf.uint8)
    both = tf.image.resize(rows, (size, size), method="bilinear", antialias=True)
    return tf.cast(tf.round(tf.clip_by_value(both, 0, 255)), tf.uint8)


def film_in_graph(data, prep: Preprocessing):
    """One encoded film as the model's input, uint8 [size, size, 1], in TensorFlow ops only."""
    from cxr.data.reader import resize_film

    # Two resizes, as training saw them: to the stored size (`cxr preprocess`, PIL), then the reader's.
    stored = _pil_bilinear(_grayscale_uint8(data, prep.processed_size), prep.processed_size)
    return resize_film(stored, prep.image_size)


def serving_function(model, prep: Preprocessing, threshold: float):
    """encoded films [n] -> {"probability": [n], "decision": [n]}, the whole preprocessing in the graph."""
    import tensorflow as tf

    def serve(image_bytes):
        films = tf.map_fn(lambda data: film_in_graph(data, prep), image_bytes,
                          fn_output_signature=tf.TensorSpec([prep.image_size, prep.image_size, 1], tf.uint8))
        probability = tf.reshape(model(films, training=False), [-1])
        # float64, as cxr.serving.trained.decide: a float32 comparison rounds a threshold one float64 step above
        # a probability down onto it.
        positive = tf.cast(probability, tf.float64) >= tf.constant(threshold, tf.float64)
        decision = tf.where(positive, settings.CLASS_NAMES[1], settings.CLASS_NAMES[0])
        return {"probability": probability, "decision": decision}

    return serve


def export(model_dir: Path, out: Path, result_dir: Path | None = None, threshold: float | None = None) -> Path:
    """Write model_dir's model as a SavedModel to out/1/ (TF Serving's layout: point its model base path, or a
    KServe storageUri, at `out`) and return out/1. `out` is an owned output folder (cxr.outputs): a rerun of the
    same export on a finished `out` reuses it, anything else in it is refused."""
    out, model_dir = Path(out), Path(model_dir)
    _refuse_inside(out, model_dir, "--model")
    if result_dir is not None:
        _refuse_inside(out, Path(result_dir), "--result")
    threshold = find_threshold(model_dir, result_dir, threshold)
    read_preprocessing(model_dir)  # before the claim: a wrong --model leaves --out free for the right one
    with claim(out, "export", {"model": str(model_dir.resolve()), "threshold": threshold}) as output:
        if output.finished and (out / VERSION / "saved_model.pb").is_file():
            print(f"export: {out} already holds this export; reusing it", file=sys.stderr)
            return out / VERSION
        target = _export(model_dir, out, threshold, provenance.export_record(model_dir, result_dir))
        output.finish()
    return target


def _refuse_inside(out: Path, owned: Path, option: str) -> None:
    """`out` may not be `owned` or a folder inside it: `cxr train` and `cxr evaluate` own their folders, and
    a SavedModel written among their files would be taken for part of them (and copied with them)."""
    out_path, owned_path = out.resolve(), owned.resolve()
    if out_path == owned_path or owned_path in out_path.parents:
        raise UserError(f"--out {out} is inside {option} {owned}, a folder another cxr command owns; export to a "
                        "folder of its own")


def _export(model_dir: Path, out: Path, threshold: float, record: dict) -> Path:
    import keras
    import tensorflow as tf

    prep = read_preprocessing(model_dir)
    model = load_model(model_dir)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serving_function(model, prep, threshold),
                         input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_NAME)])
    target = out / VERSION
    archive.write_out(str(target), verbose=False)
    (out / "cxr_export.json").write_text(json.dumps({
        "model_dir": str(model_dir), "threshold": threshold, **prep.__dict__, "provenance": record,
        "signature": {"inputs": {INPUT_NAME: "string [batch]: JPEG or PNG bytes"},
                      "outputs": {"probability": "float32 [batch]", "decision": "string [batch]"}}}, indent=2))
    return target


def best_candidate(candidates: Sequence[tuple[Path, Path]]) -> tuple[Path, Path]:
    """The (model_dir, result_dir) with the highest validation ROC AUC, ties to the lower validation loss:
    the model to serve is chosen on validation data, never on the test split whose numbers the report gives."""
    if not candidates:
        raise UserError("no evaluated model to export")

    def validation(candidate: tuple[Path, Path]) -> tuple[float, float]:
        metrics = artifacts.read_metrics(Path(candidate[1]) / files.METRICS)["validation"]
        auc = metrics["roc_auc"] if metrics["roc_auc"] is not None else float("-inf")
        return -auc, metrics["loss"]

    return min(candidates, key=validation)


def export_best(candidates: Sequence[tuple[Path, Path]], out: Path) -> tuple[str, Path]:
    """Export the best of (model_dir, result_dir) pairs (best_candidate) to `out`; return its backbone and the
    SavedModel's path. For the pipeline's aggregate step."""
    from cxr.serving.trained import backbone_name

    model_dir, result_dir = best_candidate(candidates)
    return backbone_name(model_dir), export(model_dir, out, result_dir=result_dir)


def export_best_of(model_dirs: Sequence[Path], result_dirs: Sequence[Path], out: Path) -> str | None:
    """The pipeline's export: pair each finished result with its model by backbone, regime and seed (one backbone
    may be trained in both regimes), export the best (on validation) to `out` and return its backbone; None when no
    training finished."""
    def key(folder: Path) -> tuple[str, str, int] | None:
        if artifacts.read_failure(folder) is not None or not (Path(folder) / files.TRAIN_METRICS).is_file():
            return None
        trained = artifacts.read_train_metrics(Path(folder) / files.TRAIN_METRICS)
        return trained["backbone"], trained["settings"]["regime"], int(trained["settings"]["seed"])

    models = {key(d): Path(d) for d in model_dirs if key(d) is not None}
    pairs = [(models[key(r)], Path(r)) for r in result_dirs if key(r) is not None and key(r) in models]
    if not pairs:
        Path(out).mkdir(parents=True, exist_ok=True)  # an output artifact KFP uploads even when empty
        return None
    backbone, _ = export_best(pairs, out)
    return backbone
